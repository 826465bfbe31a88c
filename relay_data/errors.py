"""Errors about user data, reported by the CLI as one clear line (no traceback)."""


class DataError(ValueError):
  """Bad input data: names the file, episode and field at fault.

  Subclasses ValueError so library callers can catch the usual exception type.
  """

  def __init__(self, message: str, *, path=None, episode=None, field=None):
    where = []
    if path is not None:
      where.append(f"file {path}")
    if episode is not None:
      where.append(f"episode {episode}")
    if field is not None:
      where.append(f"field '{field}'")
    self.path, self.episode, self.field = path, episode, field
    super().__init__(f"{', '.join(where)}: {message}" if where else message)
