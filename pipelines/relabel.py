"""Relabel RLDS play episodes into goal-conditioned examples, as an Apache Beam pipeline.

    episode ranges ──> per range: read, validate, relabel (relay_data.relabel), encode and
        stream into one shard ──> TFDS metadata + lineage ──> rename into place

Runs on the DirectRunner by default; pass Beam pipeline options (`--runner=FlinkRunner ...`) to
scale out. Every worker must see the source and output paths. Output is deterministic: shard i
holds the i-th range of consecutive episodes in episode order, so the same input and config
give byte-identical shards whatever the runner's scheduling. The output is built in
a temp sibling directory and renamed into place only on success (atomic on local filesystems).
"""
import dataclasses
import json
import math
import os
import shutil
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from pipelines import progress
from relay_data import atomic, example_codec, goal_space, paths, relabeled, rlds_io, schema, version
from relay_data.errors import DataError

NAMESPACE = "relay.relabel"
REQUIRED_STEP_FIELDS = ("observation/state", "observation/goal_state", "action")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Sharding knobs (not part of the data's meaning, so not in the lineage config).

  Each Beam task reads `episodes_per_shard` consecutive episodes and streams their examples
  into one output shard, so a worker holds one episode's examples at a time: peak memory stays
  flat as the dataset grows, and there is no shuffle of the (large) relabeled data.
  """
  episodes_per_shard: int = 8
  num_shards: Optional[int] = None  # overrides episodes_per_shard


def _check_source(builder, path: str) -> Tuple[int, int, int]:
  steps = builder.info.features["steps"]
  flat = {}

  def walk(prefix, feature):
    if hasattr(feature, "items"):
      for k, v in feature.items():
        walk(f"{prefix}{k}/", v)
    else:
      flat[prefix[:-1]] = feature

  walk("", steps.feature)
  for name in REQUIRED_STEP_FIELDS:
    if name not in flat:
      raise DataError("missing from the source dataset's steps", path=path, field=f"steps/{name}")
    if len(flat[name].shape) != 1:
      raise DataError(f"expected rank-1 per-step tensors, got shape {flat[name].shape}", path=path,
                      field=f"steps/{name}")
  return tuple(int(flat[n].shape[0]) for n in REQUIRED_STEP_FIELDS)


def _relabel_one(index: int, ep: schema.Episode, config: relabeled.RelabelConfig, source: str):
  """Validated relabeling of one episode; None (and a counter) when it yields nothing."""
  from apache_beam.metrics import Metrics  # pylint: disable=import-outside-toplevel
  if ep["observation"].shape[0] < schema.MIN_STEPS:
    Metrics.counter(NAMESPACE, "episodes_skipped_too_short").inc()
    return None
  for field, stored_as in (("observation", "observation/state"), ("goal_state", "observation/goal_state"),
                           ("action", "action")):
    if not np.all(np.isfinite(ep[field])):
      bad = int(np.argwhere(~np.isfinite(ep[field]))[0][0])
      raise DataError(f"contains NaN or inf (first at step {bad})", path=source,
                      episode=f"#{index} (id {ep['episode_id']!r})", field=f"steps/{stored_as}")
  examples = relabeled.relabel_episode(config, ep["observation"], ep["goal_state"], ep["action"],
                                       f"{index}/{ep['episode_id']}")
  if len(next(iter(examples.values()))) == 0:
    Metrics.counter(NAMESPACE, "episodes_without_examples").inc()
    return None
  return examples


def _progress_dir(prefix: str) -> str:
  return os.path.join(os.path.dirname(prefix), "_progress")


def _write_shard(task: Tuple[int, Tuple[int, int]], source: str, config: relabeled.RelabelConfig,
                 codec: example_codec.FloatExampleCodec, prefix: str, num_shards: int) -> Tuple[int, int, int]:
  """Relabels episodes [start, end) in order and streams them into shard `shard` (idempotent)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from apache_beam.metrics import Metrics  # pylint: disable=import-outside-toplevel
  shard, (start, end) = task
  path = f"{prefix}-{shard:05d}-of-{num_shards:05d}"
  count = 0
  with tf.io.TFRecordWriter(path) as writer:
    for offset, episode in enumerate(rlds_io.iter_episodes(source, start, end)):
      Metrics.counter(NAMESPACE, "episodes_read").inc()
      examples = _relabel_one(start + offset, episode, config, source)
      if examples is not None:
        records = codec.encode(examples)
        for record in records:
          writer.write(record)
        count += len(records)
        Metrics.counter(NAMESPACE, "examples_written").inc(len(records))
      progress.report(_progress_dir(prefix), shard, offset + 1)
  return shard, count, os.path.getsize(path)


def _code_version() -> str:
  return version.code_version()


def run_relabel(source: str, output: str, config: relabeled.RelabelConfig,
                beam_args: Sequence[str] = (), pipeline: PipelineConfig = PipelineConfig(),
                overwrite: bool = False, name: Optional[str] = None, show_progress: bool = True) -> Dict:
  """Runs the relabeling pipeline; returns the lineage record written next to the data.

  With `show_progress`, a bar counts relabeled episodes (`pipelines.progress`; live when the
  workers share this machine's filesystem, as on the DirectRunner).
  `output` becomes a TFDS dataset directory (readable with `relay_data.relabeled.load`).
  `beam_args` are Beam pipeline options, e.g. ["--runner=DirectRunner", "--direct_num_workers=2"].
  """
  import apache_beam as beam  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel

  source_dir = rlds_io.resolve_dataset_dir(source)
  builder = rlds_io.require_episodes(source_dir)  # a relabeled dataset is no source
  state_dim, goal_dim, action_dim = _check_source(builder, source_dir)
  num_episodes = int(builder.info.splits["train"].num_examples)
  if num_episodes == 0:
    raise DataError("source dataset has no episodes", path=source_dir)
  features = relabeled.example_features(config.level, state_dim, goal_dim, action_dim)
  codec = example_codec.FloatExampleCodec({k: int(v.shape[0]) for k, v in features.items()})
  per_shard = (math.ceil(num_episodes / pipeline.num_shards) if pipeline.num_shards
               else pipeline.episodes_per_shard)
  ranges = [(s, min(s + per_shard, num_episodes)) for s in range(0, num_episodes, per_shard)]
  num_shards = len(ranges)
  name = paths.check_name(name or f"relabeled_{config.level.replace('-', '_')}")  # never a path

  options = PipelineOptions(list(beam_args) or ["--runner=DirectRunner"])
  with atomic.atomic_directory(output, overwrite=overwrite) as tmp:
    prefix = os.path.join(tmp, f"{name}-train.tfrecord")
    p = beam.Pipeline(options=options)
    shards = (p
              | "ShardTasks" >> beam.Create(list(enumerate(ranges)))
              | "Spread" >> beam.Reshuffle()
              | "RelabelAndWrite" >> beam.Map(_write_shard, source_dir, config, codec, prefix, num_shards))
    written = shards | "Collect" >> beam.combiners.ToList()
    _ = written | "Record" >> beam.Map(
        lambda rows: atomic.write_json(os.path.join(tmp, "_shards.json"), sorted(rows), sort_keys=True))
    try:
      with progress.watch(_progress_dir(prefix), num_episodes, f"relabeling ({config.level})", "ep",
                          enabled=show_progress):
        result = p.run()
        result.wait_until_finish()
    except Exception as e:  # Beam wraps worker errors; surface ours unwrapped.
      raise _unwrap(e) from e
    shutil.rmtree(_progress_dir(prefix), ignore_errors=True)
    counters = {m.key.metric.name: int(m.committed if m.committed is not None else m.attempted)
                for m in result.metrics().query()["counters"] if m.key.metric.namespace == NAMESPACE}
    with open(os.path.join(tmp, "_shards.json")) as f:
      rows = {shard: (count, size) for shard, count, size in json.load(f)}
    os.remove(os.path.join(tmp, "_shards.json"))
    lengths = [rows[shard][0] for shard in range(num_shards)]
    total_bytes = sum(rows[shard][1] for shard in range(num_shards))
    template = tfds.core.ShardedFileTemplate(data_dir=tmp, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
                                             dataset_name=name, split="train", filetype_suffix="tfrecord")
    tfds.folder_dataset.write_metadata(
        data_dir=tmp, features=features, version=rlds_io.VERSION, check_data=False,
        filename_template=template, description=f"relay relabeled examples ({config.level} level)",
        split_infos=[tfds.core.SplitInfo(name="train", shard_lengths=lengths, num_bytes=total_bytes,
                                         filename_template=template)])
    lineage = {
        "created_by": "pipelines.relabel",
        "code_version": _code_version(),
        "config": config.to_json(),
        "source": {"path": source_dir, "name": builder.info.name, "version": str(builder.info.version),
                   "fingerprint": relabeled.fingerprint(source_dir), "num_episodes": num_episodes},
        "counts": {"episodes_read": counters.get("episodes_read", 0),
                   "examples_written": counters.get("examples_written", 0),
                   "episodes_skipped_too_short": counters.get("episodes_skipped_too_short", 0),
                   "episodes_without_examples": counters.get("episodes_without_examples", 0)},
        "num_shards": num_shards,
        "beam_options": list(beam_args),
        **goal_space.provenance_of_episode_dataset(source_dir),  # spec + env_settings, carried along
    }
    if sum(lengths) != lineage["counts"]["examples_written"]:
      raise RuntimeError(f"shards hold {sum(lengths)} examples but the pipeline counted "
                         f"{lineage['counts']['examples_written']}")
    rlds_io.attach_metadata(tmp, lineage)
  return lineage


def _unwrap(error: Exception) -> Exception:
  """Our DataError from a worker, if it is in the exception chain (Beam re-raises it wrapped)."""
  seen = error
  while seen is not None:
    if isinstance(seen, DataError):
      return seen
    seen = seen.__cause__ or seen.__context__
  return error
