"""The relabeled-example datasets written by `pipelines.relabel`: config, features and reader.

On disk (format 2, "chunked columnar") a relabeled dataset is a TFDS dataset laid out as
`<output>/<name>/<version>/`, so `tfds.load(name, data_dir=output)` and
`tfds.builder_from_directory(...)` both open it. Each record of its `train` split is a chunk of
up to `CHUNK_SIZE` consecutive examples of one episode, one tensor feature per field with a
leading chunk dimension (`Tensor(shape=(None, d))`), plus two int64 columns that trace every
example back to its source: `episode_index` (the episode's position in the source's train
split; `metadata.json` maps it to the RLDS episode_id) and `step` (its time index t). TFDS
counts records, so the example count lives in `metadata.json` (`counts.examples_written`).
A plain TFDS user reads examples with

    tfds.builder_from_directory(dir).as_dataset(split="train").unbatch()

and `load` / `iter_batches` here read chunks and slice them into examples or batches without
per-example work. `metadata.json` is the lineage: format version, source dataset (name, version,
fingerprint), level, windows, goals_per_step, seed, code version, counts and per-episode rows.
Datasets of format 1 (one example per record, no format field) fail with an error that says to
regenerate them.
"""
import dataclasses
import hashlib
import json
import os
from typing import Dict, Iterable, Iterator, Optional, Sequence

import numpy as np

from relay_data import relabel, rlds_io
from relay_data.errors import DataError

LEVELS = ("low", "high", "flat", "final-goal", "bc")
FORMAT = {"name": "chunked-columnar", "version": 2}
CHUNK_SIZE = 1024
INDEX_FIELDS = ("episode_index", "step")  # int64 columns carried by every example


@dataclasses.dataclass(frozen=True)
class RelabelConfig:
  """What to relabel and how. Paper defaults: W_l = 30, W_h spans a whole play sequence.

  level: low | high | flat (one-level GCBC with relabeling) | final-goal (GCBC, goal = last
    state) | bc (no goal).
  window: W_l for low and high, W for flat; unused by final-goal and bc.
  window_high: W_h for high only; must exceed `window`.
  goals_per_step: k goals drawn per step instead of all (bounds output size), None = all.
  seed: with the episode id, seeds the goal sampling of each episode.
  action_chunk: k > 1 adds an `action_chunk` field (a_t..a_{t+k-1}) to the levels that carry
    actions (all but high): the targets of policies that predict k actions at once. None:
    `relabel.DEFAULT_ACTION_CHUNK` for those levels, 1 for high.
  goals_on_driven_steps: in episodes with `policy_driven` steps (DAgger play), let goals and
    subgoals land on them too (the ablation); by default they never do (`relabel.valid_pairs`).
  perturbation_threshold: None (the default) takes goals from every step. A number tau keeps
    goals and subgoals off the states a perturbation put the hand in: those reached by an action
    whose executed version (the step's `executed_action`, DART play) departed from its label by
    more than tau (`relabel.perturbed_states`). Their observations still teach the expert's
    correction toward the goals outside the burst. Needs a source with `executed_action`.
  """
  level: str = "low"
  window: int = relabel.DEFAULT_WINDOW
  window_high: int = 280
  goals_per_step: Optional[int] = None
  seed: int = 0
  action_chunk: Optional[int] = None
  goals_on_driven_steps: bool = False
  perturbation_threshold: Optional[float] = None

  def __post_init__(self):
    if self.level not in LEVELS:
      raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {self.level!r}")
    if self.action_chunk is None:
      object.__setattr__(self, "action_chunk", 1 if self.level == "high" else relabel.DEFAULT_ACTION_CHUNK)
    relabel._check_chunk(self.action_chunk)  # pylint: disable=protected-access
    if self.level == "high" and self.action_chunk != 1:
      raise ValueError("action_chunk applies to levels with actions (low, flat, final-goal, bc), not high")
    relabel._check_window("window", self.window)  # pylint: disable=protected-access
    relabel._check_k(self.goals_per_step)  # pylint: disable=protected-access
    if self.level == "high":
      relabel._check_window("window_high", self.window_high)  # pylint: disable=protected-access
      if self.window_high <= self.window:
        raise ValueError(f"window_high ({self.window_high}) must be larger than window ({self.window})")
    tau = self.perturbation_threshold
    if tau is not None and (isinstance(tau, bool) or not isinstance(tau, (int, float)) or not np.isfinite(tau)
                            or tau < 0):
      raise ValueError(f"perturbation_threshold must be a non-negative number, got {tau!r}")
    if tau is not None and self.level in ("final-goal", "bc"):
      raise ValueError(f"perturbation_threshold chooses relabeled goals; level {self.level} relabels none")

  def to_json(self) -> Dict:
    out = dataclasses.asdict(self)
    if self.level != "high":
      out.pop("window_high")
    if self.level in ("final-goal", "bc"):
      out.pop("window")
      out.pop("goals_per_step")
    if self.action_chunk == 1:  # datasets made before the option existed keep their lineage
      out.pop("action_chunk")
    if not self.goals_on_driven_steps:  # likewise
      out.pop("goals_on_driven_steps")
    if self.perturbation_threshold is None:  # likewise
      out.pop("perturbation_threshold")
    return out

  def target_ok(self, policy_driven: Optional[np.ndarray],
                perturbed: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
    """The steps goals may come from (None: all): not the policy-driven ones, unless told, and
    not the `perturbed` ones (`relabel.perturbed_states`, given with `perturbation_threshold`)."""
    if self.level in ("final-goal", "bc"):
      return None
    masks = [np.asarray(m, bool) for m, use in ((policy_driven, not self.goals_on_driven_steps),
                                                (perturbed, self.perturbation_threshold is not None))
             if m is not None and use]
    if not masks:
      return None
    return ~np.logical_or.reduce(masks)

  def perturbed(self, actions: np.ndarray, executed_actions: Optional[np.ndarray],
                episode: str = "") -> Optional[np.ndarray]:
    """The episode's perturbed states under `perturbation_threshold` (None when it is not set)."""
    if self.perturbation_threshold is None:
      return None
    if executed_actions is None:
      raise ValueError(f"perturbation_threshold needs the episode's executed actions{' (' + episode + ')' if episode else ''}")
    return relabel.perturbed_states(actions, executed_actions, self.perturbation_threshold)


def episode_seed(seed: int, episode_key: str) -> int:
  """Stable per-episode seed from the config seed and the episode's id (not Python's hash())."""
  digest = hashlib.sha256(f"{seed}/{episode_key}".encode()).digest()
  return int.from_bytes(digest[:8], "little")


def relabel_episode(config: RelabelConfig, states, goal_states, actions, episode_key: str,
                    policy_driven: Optional[np.ndarray] = None, perturbed: Optional[np.ndarray] = None):
  """Dispatches one episode to the pure relabeling function of `config.level` (`perturbed`:
  `config.perturbed(...)` of the episode)."""
  seed = episode_seed(config.seed, episode_key)
  target_ok = config.target_ok(policy_driven, perturbed)
  if config.level in ("low", "flat"):
    return relabel.low_level_examples(states, goal_states, actions, config.window,
                                      config.goals_per_step, seed, config.action_chunk, target_ok)
  if config.level == "high":
    return relabel.high_level_examples(states, goal_states, config.window, config.window_high,
                                       config.goals_per_step, seed, target_ok)
  if config.level == "final-goal":
    return relabel.final_goal_examples(states, goal_states, actions, config.action_chunk)
  return relabel.bc_examples(states, actions, config.action_chunk)


def example_dims(level: str, state_dim: int, goal_dim: int, action_dim: int,
                 action_chunk: int = 1) -> Dict[str, int]:
  """The float32 fields of one relabeled example of `level` and their widths."""
  dims = {"observation": state_dim, "action": action_dim, "goal": goal_dim, "subgoal": goal_dim,
          "action_chunk": action_chunk * action_dim}
  keys = {"low": ("observation", "action", "goal"), "flat": ("observation", "action", "goal"),
          "final-goal": ("observation", "action", "goal"), "high": ("observation", "subgoal", "goal"),
          "bc": ("observation", "action")}[level]
  if action_chunk > 1 and "action" in keys:
    keys += ("action_chunk",)
  return {k: int(dims[k]) for k in keys}


def example_features(level: str, state_dim: int, goal_dim: int, action_dim: int, action_chunk: int = 1):
  """TFDS features of one record (a chunk of examples) of a relabeled dataset of `level`."""
  return features_of(example_dims(level, state_dim, goal_dim, action_dim, action_chunk))


def features_of(dims: Dict[str, int]):
  """TFDS features of a record holding float fields `dims` plus the int64 index columns."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  features = {k: tfds.features.Tensor(shape=(None, d), dtype=np.float32) for k, d in dims.items()}
  features.update({k: tfds.features.Tensor(shape=(None,), dtype=np.int64) for k in INDEX_FIELDS})
  return tfds.features.FeaturesDict(features)


def step_index(config: RelabelConfig, num_steps: int, policy_driven: Optional[np.ndarray] = None,
               perturbed: Optional[np.ndarray] = None) -> np.ndarray:
  """Time index t of each example `relabel_episode` returns for an episode of `num_steps` rows.

  Follows from `relabel.relabel_indices`' contract (ordered by t; step t keeps min(k, #valid j)
  goals, #valid j = min(W, T - t) without a target mask) without redoing its random draw.
  """
  last = max(num_steps - 1, 0)
  t = np.arange(last)
  if config.level in ("final-goal", "bc"):
    return t
  window = config.window_high if config.level == "high" else config.window
  target_ok = config.target_ok(policy_driven, perturbed)
  if target_ok is not None:
    subgoal_window = config.window if config.level == "high" else None
    per_step = relabel.valid_pairs(num_steps, window, target_ok, subgoal_window).sum(axis=1)
  else:
    per_step = np.minimum(window, last - t)
  if config.goals_per_step is not None:
    per_step = np.minimum(per_step, config.goals_per_step)
  return np.repeat(t, per_step)


# ---- reading -------------------------------------------------------------------------------


def read_lineage(path: str) -> Dict:
  """The lineage record (metadata.json) of a relabeled dataset (any format)."""
  return rlds_io.read_metadata(path)


def dataset_dir(path: str) -> str:
  """The dataset version dir of the relabeled dataset at `path`; checks it is format 2.

  Accepts what `relay relabel --output` was given, or the `<name>/<version>` dir inside it.
  """
  directory = rlds_io.resolve_dataset_dir(path)
  lineage = rlds_io.read_metadata(directory)
  if lineage.get("created_by") != "pipelines.relabel":
    raise DataError("not a relabeled dataset (its metadata.json has no relabel lineage)", path=directory)
  fmt = lineage.get("format", {"name": "one-example-per-record", "version": 1})
  if fmt.get("version") != FORMAT["version"]:
    config = lineage.get("config", {})
    order = [f.name for f in dataclasses.fields(RelabelConfig)]  # flags in the CLI's order, whatever the file's
    keys = sorted(config, key=lambda k: order.index(k) if k in order else len(order))
    flags = " ".join(f"--{k.replace('_', '-')} {config[k]}" for k in keys if config[k] is not None)
    raise DataError(f"relabeled dataset format {fmt.get('version')} ({fmt.get('name')}) is no longer "
                    f"readable; this relay reads format {FORMAT['version']} ({FORMAT['name']}). Regenerate "
                    f"it: relay relabel --source {lineage.get('source', {}).get('path', 'SOURCE')} {flags} "
                    f"--output NEW_DIR", path=directory)
  return directory


def dims_of(path: str) -> Dict[str, int]:
  """Float fields of a relabeled dataset's examples and their widths (e.g. observation 59)."""
  return dict(read_lineage(dataset_dir(path))["fields"])


def num_examples(path: str) -> int:
  """Examples in a relabeled dataset (TFDS's own count is of records, i.e. chunks)."""
  return int(read_lineage(dataset_dir(path))["counts"]["examples_written"])


def _shard_files(directory: str, lineage: Dict):
  name, shards = lineage["name"], lineage["num_shards"]
  return [os.path.join(directory, f"{name}-train.tfrecord-{i:05d}-of-{shards:05d}") for i in range(shards)]


def chunk_dataset(path: str, fields: Optional[Sequence[str]] = None, shuffle_files: bool = False,
                  seed: int = 0, cycle_length: int = 4):
  """A `tf.data.Dataset` of chunks: dicts of [n, d] float32 fields and [n] int64 columns.

  In file order unless `shuffle_files` (then shard order is shuffled with `seed` and
  `cycle_length` shards are read interleaved, so consecutive chunks come from different parts
  of the dataset).
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  directory = dataset_dir(path)
  lineage = read_lineage(directory)
  dims = lineage["fields"]
  fields = list(fields) if fields is not None else sorted(dims) + list(INDEX_FIELDS)
  unknown = [f for f in fields if f not in dims and f not in INDEX_FIELDS]
  if unknown:
    raise ValueError(f"unknown field(s) {unknown}; {directory} has {sorted(dims) + list(INDEX_FIELDS)}")
  spec = {f: tf.io.FixedLenSequenceFeature([dims[f]], tf.float32, allow_missing=True) if f in dims
          else tf.io.FixedLenSequenceFeature([], tf.int64, allow_missing=True) for f in fields}
  files = _shard_files(directory, lineage)
  if shuffle_files:
    files = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed)
    records = files.interleave(tf.data.TFRecordDataset, cycle_length=cycle_length, block_length=1,
                               deterministic=True)
  else:
    records = tf.data.TFRecordDataset(files)
  return records.map(lambda r: tf.io.parse_single_example(r, spec), num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=True)


def load(path: str, shuffle_files: bool = False, batch_size: Optional[int] = None,
         fields: Optional[Sequence[str]] = None, drop_remainder: bool = False):
  """A relabeled dataset as a `tf.data.Dataset` of examples (dicts of [d] tensors), or of
  batches of `batch_size` examples ([batch_size, d]; re-batched from the chunks without
  per-example ops). For numpy, `iter_batches` is faster still."""
  chunks = chunk_dataset(path, fields, shuffle_files)
  if batch_size is None:
    return chunks.unbatch()
  return chunks.rebatch(batch_size, drop_remainder=drop_remainder)


def iter_chunks(path: str, fields: Optional[Sequence[str]] = None, shuffle_files: bool = False,
                seed: int = 0, cycle_length: int = 4) -> Iterator[Dict[str, np.ndarray]]:
  """The chunks of `chunk_dataset` as numpy dicts."""
  return chunk_dataset(path, fields, shuffle_files, seed, cycle_length).prefetch(2).as_numpy_iterator()


def rebatch(chunks: Iterable[Dict[str, np.ndarray]], batch_size: int,
            drop_remainder: bool = False) -> Iterator[Dict[str, np.ndarray]]:
  """Numpy chunks of any sizes -> batches of exactly `batch_size` (the last may be short).

  Batches inside one chunk are views of it; only batches straddling chunks are copied.
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  pending, have = [], 0
  for chunk in chunks:
    n = len(next(iter(chunk.values())))
    start = 0
    if pending:
      take = min(batch_size - have, n)
      pending.append({k: v[:take] for k, v in chunk.items()})
      have += take
      start = take
      if have < batch_size:
        continue
      yield {k: np.concatenate([p[k] for p in pending]) for k in chunk}
      pending, have = [], 0
    while n - start >= batch_size:
      yield {k: v[start:start + batch_size] for k, v in chunk.items()}
      start += batch_size
    if start < n:
      pending, have = [{k: v[start:] for k, v in chunk.items()}], n - start
  if pending and not drop_remainder:
    yield {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}


def iter_batches(path: str, batch_size: int, fields: Optional[Sequence[str]] = None,
                 drop_remainder: bool = False, shuffle_files: bool = False,
                 seed: int = 0) -> Iterator[Dict[str, np.ndarray]]:
  """Numpy batches of `batch_size` examples, in file order unless `shuffle_files`."""
  return rebatch(iter_chunks(path, fields, shuffle_files, seed), batch_size, drop_remainder)


def read_arrays(path: str, max_examples: Optional[int] = None,
                fields: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
  """The first `max_examples` examples (all when None) as one dict of arrays."""
  parts, n = [], 0
  for chunk in iter_chunks(path, fields):
    parts.append(chunk)
    n += len(next(iter(chunk.values())))
    if max_examples is not None and n >= max_examples:
      break
  if not parts:
    raise DataError("relabeled dataset has no examples", path=path)
  return {k: np.concatenate([p[k] for p in parts])[:max_examples] for k in parts[0]}


_FINGERPRINT_READ_BYTES = 4 << 20


def fingerprint(path: str) -> str:
  """Content fingerprint of a TFDS dataset directory, episode (play) or relabeled dataset alike.

  The one fingerprint relay keys things by: a relabeled dataset's source in its lineage, a
  model's training data (`relay_agents.train`), the play dataset of an evaluation log
  (`relay eval`). It hashes dataset_info.json (minus its absolute `dataInfoDir`) and every
  shard's name and bytes, so datasets that differ in any byte differ here, and the same content
  copied to another directory fingerprints the same. Not its mtime or metadata.json (which names
  paths).

  Why every byte rather than a cheaper proxy: shard names and sizes alone made datasets with the
  same sizes but other content (another seed, a re-generated source) look identical, and models
  and eval logs are keyed by this. Hashing stays cheap: SHA-256 streamed in 4 MiB reads through
  `tf.io.gfile` (so gs:// etc. work) ran at ~0.5 GB/s on a 56 MB relabeled dataset (0.11 s,
  shared 2-core box), small next to building or training on the data. TFRecord CRCs were the
  other option (reading only record headers), but they cost a seek per record, which on object
  stores is a request per record, and they vouch for the bytes only as far as a reader checks them.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  directory = rlds_io.resolve_dataset_dir(path) if "://" not in path else path
  h = hashlib.sha256()
  with tf.io.gfile.GFile(os.path.join(directory, "dataset_info.json"), "rb") as f:
    info = json.load(f)
  info.pop("dataInfoDir", None)  # Absolute path: not content.
  h.update(json.dumps(info, sort_keys=True).encode())
  for name in sorted(tf.io.gfile.listdir(directory)):
    if ".tfrecord" in name or ".array_record" in name:
      h.update(f"\n{name}:{tf.io.gfile.stat(os.path.join(directory, name)).length}\n".encode())
      with tf.io.gfile.GFile(os.path.join(directory, name), "rb") as f:
        for block in iter(lambda: f.read(_FINGERPRINT_READ_BYTES), b""):
          h.update(block)
  return h.hexdigest()[:16]

