"""Read and write relay RLDS datasets (TFDS format on disk).

Writing goes through a TFDS builder (`tfds.dataset_builders.AdhocBuilder`, or the kitchen_play
builder), built in a temp dir under the output's write lock and renamed into place, so the
result is a normal TFDS dataset: `tfds.builder_from_directory(path)` loads it, and
`dataset_info.json` carries features, splits and counts. Dataset-level facts (generator
version, held-out goal sets, lineage) live in the dataset's `metadata.json` (TFDS
`MetadataDict`), attached one way by every writer (`attach_metadata`).
"""
import contextlib
import itertools
import json
import os
import shutil
from typing import Any, Callable, Dict, Iterable, Iterator, Optional

from relay_data import atomic, paths, schema
from relay_data.errors import DataError

VERSION = "1.0.0"
METADATA_FILE = "metadata.json"  # the file TFDS's MetadataDict reads into `builder.info.metadata`


class QuietBuilderMixin:
  """For relay's TFDS builders: no "Downloading and preparing dataset ..." prints (nothing is
  downloaded; relay's commands print their own one-line summary)."""

  def _log_download_bytes(self):
    pass

  def _log_download_done(self):
    pass


def attach_metadata(dataset_dir: str, metadata: Optional[dict]) -> str:
  """The one way relay attaches dataset-level metadata to a TFDS dataset it writes.

  Writes `metadata.json` into the dataset's (temp) version dir once its TFDS files exist, before
  the dir is renamed into place; TFDS reads it back as `builder.info.metadata` (a MetadataDict)
  and `read_metadata` returns it. Used by `write_rlds`, the kitchen_play builder and the relabel
  pipeline, so every relay dataset carries its facts (generator version, held-out sets, lineage)
  the same way.
  """
  return atomic.write_json(os.path.join(dataset_dir, METADATA_FILE), dict(metadata or {}), sort_keys=True)


@contextlib.contextmanager
def _tfds_bars_off():
  """TFDS's own nested bars (splits / examples / shuffling) off: the caller shows one bar."""
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=import-outside-toplevel
  tqdm_utils.display_progress_bar(False)
  try:
    yield
  finally:
    tqdm_utils.display_progress_bar(True)


def prepare(builder) -> str:
  """`builder.download_and_prepare()` without network lookups or TFDS's bars; returns its data_dir."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  with _tfds_bars_off():
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder.data_dir


def prepare_atomically(make_builder: Callable[[str], Any], final_dir: str, overwrite: bool = False) -> str:
  """Builds the TFDS dataset `make_builder(staging_data_dir)` and moves its version dir to `final_dir`.

  Built under `final_dir`'s write lock in a temp sibling (`atomic.atomic_directory`), so a crash
  or Ctrl-C leaves nothing behind, a concurrent run fails with BusyError instead of colliding,
  and `overwrite` replaces the old dataset only once the new one is complete. TFDS's own
  `<version>.incomplete*` leftovers of older, interrupted builds are removed under the lock.
  """
  final_dir = os.path.abspath(final_dir)
  with atomic.atomic_directory(final_dir, overwrite=overwrite) as tmp:
    parent, version = os.path.split(final_dir)
    for entry in os.listdir(parent):
      if entry.startswith(f"{version}.incomplete"):
        shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
    staging = os.path.join(tmp, "_staging")
    built = prepare(make_builder(staging))
    for entry in os.listdir(built):
      os.rename(os.path.join(built, entry), os.path.join(tmp, entry))
    shutil.rmtree(staging)
  return final_dir


def _make_builder(name, features, examples, data_dir, description, version=VERSION):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  class _Builder(QuietBuilderMixin, tfds.dataset_builders.AdhocBuilder, skip_registration=True):
    pass

  return _Builder(name=name, version=version, features=features,
                  split_datasets={"train": examples}, data_dir=data_dir, description=description,
                  disable_shuffling=True)


def write_rlds(records: Iterable[Dict[str, Any]], features, name: str, data_dir: str,
               metadata: Optional[dict] = None, description: str = "", overwrite: bool = False) -> str:
  """Builds a TFDS dataset `data_dir/name/VERSION` from already-encoded records, atomically.

  TFDS writes `<staging>/<name>/<version>` inside a temp sibling of `data_dir/name`; the version
  dir is moved up, its metadata attached, and the temp dir renamed into place only after the
  build succeeded.
  """
  final = os.path.join(os.path.abspath(data_dir), paths.check_name(name, "dataset name"))
  with atomic.atomic_directory(final, overwrite=overwrite) as tmp:
    staging = os.path.join(tmp, "_staging")
    built = prepare(_make_builder(name, features, enumerate(records), staging, description))
    os.rename(built, os.path.join(tmp, VERSION))
    shutil.rmtree(staging)
    attach_metadata(os.path.join(tmp, VERSION), metadata)
  return os.path.join(final, VERSION)


def write_episodes(episodes: Iterable[schema.Episode], name: str, data_dir: str,
                   metadata: Optional[dict] = None, description: str = "relay RLDS episodes",
                   overwrite: bool = False, progress: bool = True, source: Optional[str] = None) -> str:
  """Validates and writes in-memory episodes as an RLDS TFDS dataset; returns its directory.

  Episodes are validated one by one as they are written (`schema.normalize_episode`); the first
  bad one aborts the write with a DataError naming `source`, the episode and the field, and
  nothing is left on disk.
  """
  iterator = iter(episodes)
  try:
    first = next(iterator)
  except StopIteration:
    raise DataError("no episodes to write", path=source) from None
  first = schema.normalize_episode(first, path=source, episode_id=0)
  features = schema.features_for(first)
  state_dim, goal_dim, action_dim = (first[k].shape[1] for k in ("observation", "goal_state", "action"))

  def records():
    bar = _progress(progress, f"writing {name}")
    for i, raw in enumerate(itertools.chain([first], iterator)):
      ep = raw if i == 0 else schema.normalize_episode(raw, path=source, episode_id=i)
      for key, dim in (("observation", state_dim), ("goal_state", goal_dim), ("action", action_dim)):
        if ep[key].shape[1] != dim:
          raise DataError(f"has dim {ep[key].shape[1]}, earlier episodes have {dim}", path=source,
                          episode=ep["episode_id"], field=key)
      bar.update(1)
      yield schema.to_rlds_record(ep)
    bar.close()

  return write_rlds(records(), features, name, data_dir, metadata, description, overwrite)


def _progress(enabled: bool, desc: str):
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  return tqdm(desc=desc, unit="ep", disable=not enabled, leave=False)


def resolve_dataset_dir(path: str) -> str:
  """Accepts a dataset version dir, or a dir holding exactly one dataset (name/version) below it."""
  path = os.path.abspath(path)
  if os.path.isfile(os.path.join(path, "dataset_info.json")):
    return path
  if os.path.isfile(path):
    raise DataError("is a file, not a dataset directory", path=path)
  if not os.path.isdir(path):
    raise DataError("no such dataset directory", path=path)
  found = sorted(os.path.dirname(p) for p in _glob_info(path))
  if not found:
    raise DataError("no TFDS dataset (dataset_info.json) found here or one/two levels below", path=path)
  if len(found) > 1:
    raise DataError(f"several datasets found; name one of: {', '.join(found)}", path=path)
  return found[0]


def _glob_info(path):
  import glob  # pylint: disable=import-outside-toplevel
  for pattern in ("*/dataset_info.json", "*/*/dataset_info.json"):
    hits = [h for h in glob.glob(os.path.join(path, pattern)) if "/." not in h[len(path):]]
    if hits:
      return hits
  return []


def load_builder(path: str):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  return tfds.builder_from_directory(resolve_dataset_dir(path))


def read_metadata(path: str) -> dict:
  """The dataset-level metadata.json of a relay dataset ({} when absent)."""
  meta = os.path.join(resolve_dataset_dir(path), METADATA_FILE)
  if not os.path.exists(meta):
    return {}
  try:
    with open(meta) as f:
      value = json.load(f)
  except ValueError as e:
    raise DataError(f"is not valid JSON ({e}); the dataset is damaged", path=meta) from e
  if not isinstance(value, dict):
    raise DataError("is not a JSON object; the dataset is damaged", path=meta)
  return value


def is_episodes(builder) -> bool:
  """True for an RLDS dataset of episodes (a `steps` feature), False for relabeled examples."""
  return "steps" in builder.info.features


def require_episodes(path: str, flag: Optional[str] = None):
  """The builder of an RLDS episode dataset at `path`; a DataError for a relabeled one."""
  builder = load_builder(path)
  if not is_episodes(builder):
    source = (read_metadata(path).get("source") or {})
    hint = f" it was relabeled from {source['path']}; give that" if isinstance(source, dict) and \
        source.get("path") else " give the play (RLDS) dataset"
    raise DataError(f"{flag + ' ' if flag else ''}is a relabeled dataset (goal-conditioned examples), "
                    f"not RLDS play episodes;{hint}", path=resolve_dataset_dir(path))
  return builder


def num_examples(path: str) -> int:
  """Records in the train split: episodes of an RLDS dataset, examples of a relabeled one."""
  return int(load_builder(path).info.splits["train"].num_examples)


def iter_episodes(path: str, start: int = 0, end: Optional[int] = None) -> Iterator[schema.Episode]:
  """Yields episodes [start, end) of the train split as numpy dicts (see `schema`)."""
  builder = require_episodes(path)
  split = f"train[{start}:{'' if end is None else end}]"
  ds = builder.as_dataset(split=split, shuffle_files=False)
  for record in ds:
    steps = record["steps"]
    stacked = next(iter(steps.batch(1 << 30)))
    yield schema.from_rlds_record(_to_numpy({"steps": stacked,
                                             "episode_metadata": record["episode_metadata"]}))


def _to_numpy(tree):
  if isinstance(tree, dict):
    return {k: _to_numpy(v) for k, v in tree.items()}
  value = tree.numpy()
  return value

