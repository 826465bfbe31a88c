"""The relabel pipeline's source side: check an RLDS dataset, plan byte-range tasks, parse episodes.

The driver reads only the source's TFDS metadata and the 12-byte record headers of its TFRecord
files (`plan_tasks`); each task then reads its exact byte range once (`tfrecords.read_range`,
CRCs checked) and parses all its episodes in one call of a cached parse function
(`parse_episodes`). Only the step fields relabeling needs are parsed, so extra step fields
(e.g. `completed_tasks`) are carried harmlessly; `policy_driven` (DAgger play, stored as float32
[1]) is parsed when the source has it, and `executed_action` (perturbed play) when the relabel
config asks for it (`RelabelConfig.perturbation_threshold`).
"""
import dataclasses
import functools
from typing import Dict, List, Sequence, Tuple

import numpy as np

from pipelines import tfrecords
from relay_data.errors import DataError

# Episode field -> its flattened TFDS feature key in the RLDS records.
STEP_FIELDS = {"observation": "steps/observation/state", "goal_state": "steps/observation/goal_state",
               "action": "steps/action"}
OPTIONAL_STEP_FIELDS = {"policy_driven": "steps/policy_driven",  # parsed when the source has them
                        "executed_action": "steps/executed_action"}
EPISODE_ID = "episode_metadata/episode_id"
_KEYS = {**STEP_FIELDS, **OPTIONAL_STEP_FIELDS}


@dataclasses.dataclass(frozen=True)
class Task:
  """One shard task: episodes [first_episode, first_episode + num_episodes) of the source, which
  are the records in bytes [start, end) of `path`; they become output shard `shard`."""
  shard: int
  path: str
  start: int
  end: int
  first_episode: int
  num_episodes: int


def check_source(builder, path: str, executed_action: bool = False) -> Dict[str, int]:
  """Widths of the step fields relabeling reads; DataError naming the field if one is unusable.

  Optional fields are read when present (`policy_driven`) or when asked for: `executed_action`
  (`RelabelConfig.perturbation_threshold`), which the source must then have, as wide as its
  actions. A field relabeling does not read is never checked (it is carried harmlessly)."""
  steps = builder.info.features["steps"]
  flat = {}

  def walk(prefix, feature):
    if hasattr(feature, "items"):
      for k, v in feature.items():
        walk(f"{prefix}{k}/", v)
    else:
      flat[prefix[:-1]] = feature

  walk("", steps.feature)
  dims = {}
  for field, key in _KEYS.items():
    name = key[len("steps/"):]
    if field == "executed_action" and not executed_action:
      continue
    if name not in flat and field == "executed_action":
      raise DataError("missing from the source dataset's steps; --perturbation-threshold needs the executed "
                      "(perturbed) actions that `relay generate` records beside the labels", path=path, field=key)
    if name not in flat and field in OPTIONAL_STEP_FIELDS:
      continue
    if name not in flat:
      raise DataError("missing from the source dataset's steps", path=path, field=key)
    feature = flat[name]
    if len(feature.shape) != 1:
      raise DataError(f"expected rank-1 per-step tensors, got shape {feature.shape}", path=path, field=key)
    if np.dtype(feature.np_dtype) != np.float32:
      raise DataError(f"expected float32, got {np.dtype(feature.np_dtype)}", path=path, field=key)
    dims[field] = int(feature.shape[0])
  if "executed_action" in dims and dims["executed_action"] != dims["action"]:
    raise DataError(f"has width {dims['executed_action']} but steps/action has {dims['action']}", path=path,
                    field=_KEYS["executed_action"])
  file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
  if file_format != "tfrecord":
    raise DataError(f"source file format {file_format!r} is not supported (tfrecord only)", path=path)
  return dims


def plan_tasks(builder, path: str, episodes_per_task: int) -> List[Task]:
  """Byte-range tasks of up to `episodes_per_task` consecutive episodes, never across files.

  Episode i is the i-th record in shard-file order (TFDS's order for an unshuffled read), so
  shard k of the output holds a fixed run of episodes whatever the runner's scheduling.
  """
  split = builder.info.splits["train"]
  files = list(split.filepaths)
  lengths = list(split.shard_lengths)
  tasks, episode = [], 0
  for file_path, expected in zip(files, lengths):
    file_path = str(file_path)
    records = tfrecords.index_records(file_path)
    if len(records) != expected:
      raise DataError(f"holds {len(records)} records but dataset_info.json says {expected}", path=file_path)
    for i in range(0, len(records), episodes_per_task):
      run = records[i:i + episodes_per_task]
      start, (last_offset, last_size) = run[0][0], run[-1]
      tasks.append(Task(len(tasks), file_path, start, last_offset + last_size, episode + i, len(run)))
    episode += len(records)
  return tasks


@functools.lru_cache(maxsize=None)
def _parser(keys: Tuple[str, ...]):
  """One TensorFlow parse function per field set (per process): serialized episodes -> ragged fields.

  Eager on purpose: one `parse_example` op per task costs the same as a traced call, and
  tracing would add ~0.2 CPU-s to every worker's first task.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  spec = {k: tf.io.RaggedFeature(tf.float32) for k in keys}
  spec[EPISODE_ID] = tf.io.FixedLenFeature([], tf.string, default_value="")

  def parse(records):
    # A string tensor made from the list directly: from a numpy object array TF converts per
    # element and the op falls back to its slow eager path (~40% more CPU per call).
    out = tf.io.parse_example(tf.constant(records, dtype=tf.string), spec)
    return {k: (out[k].flat_values, out[k].row_splits) for k in keys}, out[EPISODE_ID]

  return parse


def _parse_with_tf(records: Sequence[bytes], keys: Tuple[str, ...]) -> Tuple[List[Dict], List[bytes]]:
  fields, ids = _parser(keys)(list(records))
  arrays = {k: (fields[k][0].numpy(), fields[k][1].numpy()) for k in keys}
  flats = [{k: values[splits[i]:splits[i + 1]] for k, (values, splits) in arrays.items()}
           for i in range(len(records))]
  return flats, list(ids.numpy())


class _NotPlain(Exception):
  """A record this module's wire reader leaves to TensorFlow's parser (which also words the errors)."""


def _varint(buf: bytes, pos: int) -> Tuple[int, int]:
  value = shift = 0
  while True:
    if pos >= len(buf) or shift > 63:
      raise _NotPlain()
    byte = buf[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    if byte < 0x80:
      return value, pos
    shift += 7


def _fields(buf: bytes, pos: int, end: int):
  """(field number, wire type, value start, value end) of each field of the message in buf[pos:end]."""
  while pos < end:
    tag, pos = _varint(buf, pos)
    wire = tag & 7
    if wire == 2:      # length-delimited
      size, pos = _varint(buf, pos)
      stop = pos + size
    elif wire == 0:    # varint
      stop = _varint(buf, pos)[1]
    elif wire == 5:    # fixed32
      stop = pos + 4
    elif wire == 1:    # fixed64
      stop = pos + 8
    else:              # groups (never in tf.train.Example)
      raise _NotPlain()
    if stop > end:
      raise _NotPlain()
    yield tag >> 3, wire, pos, stop
    pos = stop


def _only_field(buf: bytes, start: int, end: int, number: int) -> Tuple[int, int]:
  """Bounds of the one length-delimited field `number` of the message in buf[start:end]."""
  found = [(s, e) for f, w, s, e in _fields(buf, start, end) if f == number and w == 2]
  if len(found) != 1:
    raise _NotPlain()
  return found[0]


def _parse_record(record: bytes, keys: Tuple[str, ...]) -> Tuple[Dict, bytes]:
  """One serialized tf.train.Example -> its float features `keys` (flat float32 arrays) and its
  episode id, read straight from the protobuf wire format.

  An RLDS episode record is an Example of a dozen features, each a packed list (a float list is
  its little-endian bytes behind a few varint headers, see relay_data.example_codec), so reading
  the ones relabeling needs is a few dozen varints and one copy per field. Anything else a
  valid Example may hold (unpacked or split lists, repeated or missing keys, other value kinds)
  raises _NotPlain and the task goes to TensorFlow's parser, so such records parse exactly as
  before (quirks included: TF reads only the first run of a list split into several packed runs).
  """
  wanted = {k.encode(): k for k in keys}
  id_key = EPISODE_ID.encode()
  values = {}
  start, end = _only_field(record, 0, len(record), 1)                     # Example.features
  for number, wire, s, e in _fields(record, start, end):                  # Features.feature entries
    if number != 1 or wire != 2:
      continue
    key_start, key_end = _only_field(record, s, e, 1)
    key = record[key_start:key_end]
    if key not in wanted and key != id_key:
      continue
    if key in values:
      raise _NotPlain()
    feature_start, feature_end = _only_field(record, s, e, 2)            # Feature
    kinds = [(f, fs, fe) for f, w, fs, fe in _fields(record, feature_start, feature_end) if w == 2]
    if len(kinds) != 1 or kinds[0][0] != (1 if key == id_key else 2):    # bytes_list / float_list
      raise _NotPlain()
    list_start, list_end = _only_field(record, kinds[0][1], kinds[0][2], 1)  # packed values / the one id
    values[key] = (list_start, list_end)
  if len(values) != len(wanted) + 1:
    raise _NotPlain()
  flats = {}
  for key, name in wanted.items():
    list_start, list_end = values[key]
    if (list_end - list_start) % 4:
      raise _NotPlain()
    flats[name] = np.frombuffer(record, "<f4", (list_end - list_start) // 4, list_start).astype(np.float32)
  list_start, list_end = values[id_key]
  return flats, record[list_start:list_end]


def parse_episodes(records: Sequence[bytes], dims: Dict[str, int], path: str,
                   first_episode: int) -> List[Dict]:
  """Serialized RLDS episodes -> dicts of [L, d] float32 arrays plus `episode_id` and `index`.

  Reads the wire format directly (`_parse_record`: ~10x less CPU than a `parse_example` op,
  and no TensorFlow op at all in a worker); a task with any record outside that plain shape is
  parsed by TensorFlow instead.
  """
  if not records:
    return []
  keys = tuple(_KEYS[f] for f in sorted(dims))
  try:
    flats, ids = zip(*(_parse_record(r, keys) for r in records))
  except _NotPlain:
    flats, ids = _parse_with_tf(records, keys)
  episodes = []
  for i, episode_id in enumerate(ids):
    ep = {"index": first_episode + i, "episode_id": episode_id.decode()}
    length = None
    for field in dims:
      flat = flats[i][_KEYS[field]]
      if flat.size % dims[field]:
        raise DataError(f"holds {flat.size} values, not a multiple of its width {dims[field]}", path=path,
                        episode=_name(ep), field=_KEYS[field])
      ep[field] = flat.reshape(-1, dims[field])
      if length is None:
        length = len(ep[field])
      elif len(ep[field]) != length:
        raise DataError(f"has {len(ep[field])} steps but steps/observation/state has {length}", path=path,
                        episode=_name(ep), field=_KEYS[field])
    episodes.append(ep)
  return episodes


def _name(ep: Dict) -> str:
  return f"#{ep['index']} (id {ep['episode_id']!r})"


def check_finite(ep: Dict, path: str) -> None:
  """DataError naming the episode, field and first step of a NaN or inf."""
  for field, key in _KEYS.items():
    if field in ep and not np.all(np.isfinite(ep[field])):
      bad = int(np.argwhere(~np.isfinite(ep[field]))[0][0])
      raise DataError(f"contains NaN or inf (first at step {bad})", path=path, episode=_name(ep), field=key)
