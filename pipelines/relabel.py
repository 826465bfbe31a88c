"""Relabel RLDS play episodes into goal-conditioned examples, as an Apache Beam pipeline.

    driver: source metadata + record headers -> byte-range tasks (`pipelines.source`)
    Beam:   Create(tasks) | Map(run_task)      each task: read its bytes once (CRCs checked),
            parse its episodes in one call, relabel (relay_data.relabel), encode chunks of up to
            1,024 examples (relay_data.example_codec) and write one output shard plus a row file
            with its counts and per-episode lineage
    driver: sum the row files -> TFDS metadata + lineage -> rename into place

The pipeline is two transforms, so building it is cheap, and it needs nothing of a runner but
Create and Map: Beam's in-process runner (default), DaskRunner (`pipelines.dask_cluster`), or any other
Beam runner whose workers see the source and output paths (cluster paths go through `tf.io.gfile`;
local paths through Python's own files, which cost less per call).
Counts come from the row files, not Beam metrics (some runners, Dask among them, have none).
Output is deterministic: shard i holds the i-th run of consecutive source episodes, so the same
input and config give byte-identical files whatever the runner or scheduling. It is built in a
hidden temp sibling and renamed into place only on success; a task writes its shard and row
under temp names and renames them, so a retried task cannot leave a torn file.

Ctrl-C: Beam runs on a driver thread while the calling thread only waits (`_run_beam`), so the
KeyboardInterrupt reaches us, not a task: the run is cancelled (tasks in this process stop at
their next episode; a runner with `cancel()`, e.g. Dask, cancels its own), the temp dir is
removed and KeyboardInterrupt propagates (`relay relabel` then exits 130, nothing visible).
"""
import contextlib
import dataclasses
import gc
import io
import os
import threading
import time
import uuid
from typing import Dict, List, Optional, Sequence

import numpy as np

from pipelines import progress, source as sources, storage, tfrecords
from relay_data import example_codec, goal_space, paths, relabeled, rlds_io, schema, version
from relay_data.errors import DataError

DATASET_VERSION = "2.0.0"  # major = relabeled.FORMAT["version"]
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"  # Beam knows it by full name only
# "direct" is the in-process FnApiRunner, which Beam's DirectRunner ends up running a batch
# pipeline on; named directly, it skips DirectRunner's first attempt to download (from GitHub)
# and start the Prism runner binary. `--runner=DirectRunner` is passed to Beam unchanged.
RUNNER_ALIASES = {"direct": "FnApiRunner", "dask": DASK_RUNNER, "daskrunner": DASK_RUNNER}
CANCEL_WAIT_S = 30.0  # after Ctrl-C, how long to wait for running tasks to stop before cleaning up

# Runs interrupted in this process (by `_TaskContext.run_id`): their tasks stop at the next episode.
# A set of ids rather than an Event in the context, because Beam pickles the context per task.
_CANCELLED_RUNS = set()


class RunCancelled(RuntimeError):
  """Raised inside a task whose run was interrupted (never reaches a user: Ctrl-C does)."""


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Sharding knobs (not part of the data's meaning, so not in the lineage config).

  Each Beam task reads `episodes_per_shard` consecutive episodes (one byte range of one source
  file) and streams their examples into one output shard, so a worker holds one task's source
  bytes and one episode's examples at a time: peak memory stays flat as the dataset grows, and
  there is no shuffle of the (large) relabeled data.
  chunk_size: examples per record (consecutive examples of one episode).
  """
  episodes_per_shard: int = 32
  num_shards: Optional[int] = None  # overrides episodes_per_shard (approximately: tasks never span files)
  chunk_size: int = relabeled.CHUNK_SIZE

  def __post_init__(self):
    if self.episodes_per_shard <= 0 or self.chunk_size <= 0 or (self.num_shards is not None and self.num_shards <= 0):
      raise ValueError("episodes_per_shard, num_shards and chunk_size must be positive")


@dataclasses.dataclass(frozen=True)
class _TaskContext:
  """What every task needs besides its byte range (pickled once into the Map)."""
  source: str
  config: relabeled.RelabelConfig
  dims: Dict[str, int]            # source step fields -> widths
  example_dims: Dict[str, int]    # relabeled float fields -> widths
  data_dir: str                   # output version dir (inside the temp dir)
  rows_dir: str
  name: str
  num_shards: int
  chunk_size: int
  progress_dir: Optional[str]
  run_id: str = ""


def _check_cancelled(ctx: _TaskContext) -> None:
  if ctx.run_id in _CANCELLED_RUNS:
    raise RunCancelled(f"relabel run {ctx.run_id} was interrupted")


def shard_path(data_dir: str, name: str, shard: int, num_shards: int) -> str:
  return f"{data_dir}/{name}-train.tfrecord-{shard:05d}-of-{num_shards:05d}"


def run_task(task: sources.Task, ctx: _TaskContext) -> Dict:
  """Relabels one task's episodes into its shard; returns (and writes) its row of counts."""
  _check_cancelled(ctx)
  records = tfrecords.read_range(task.path, task.start, task.end)
  if len(records) != task.num_episodes:
    raise DataError(f"bytes {task.start}-{task.end} hold {len(records)} records, planned "
                    f"{task.num_episodes}", path=task.path)
  episodes = sources.parse_episodes(records, ctx.dims, ctx.source, task.first_episode)
  codec = example_codec.ChunkCodec(ctx.example_dims, relabeled.INDEX_FIELDS)
  path = shard_path(ctx.data_dir, ctx.name, task.shard, ctx.num_shards)
  tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"  # per attempt: a retried or duplicate attempt cannot clash
  row = {"shard": task.shard, "examples": 0, "records": 0, "bytes": 0, "episodes": [],
         "episodes_read": 0, "episodes_skipped_too_short": 0, "episodes_without_examples": 0}
  reported = time.monotonic()
  step_columns = {}  # episode length -> step column and its varints (equal lengths, equal columns)
  with tfrecords.RecordWriter(tmp) as writer:
    for done, ep in enumerate(episodes, 1):
      _check_cancelled(ctx)
      row["episodes_read"] += 1
      n = 0
      if len(ep["observation"]) < schema.MIN_STEPS:
        row["episodes_skipped_too_short"] += 1
      else:
        sources.check_finite(ep, ctx.source)
        driven = ep["policy_driven"][:, 0] > 0.5 if "policy_driven" in ep else None
        perturbed = ctx.config.perturbed(ep["action"], ep.get("executed_action"))
        examples = relabeled.relabel_episode(ctx.config, ep["observation"], ep["goal_state"], ep["action"],
                                             f"{ep['index']}/{ep['episode_id']}", driven, perturbed)
        length = len(ep["observation"])
        if ctx.config.target_ok(driven, perturbed) is not None:  # this episode's own steps
          step = {"step": example_codec.varint_column(relabeled.step_index(ctx.config, length, driven, perturbed))}
        else:
          if length not in step_columns:
            steps = relabeled.step_index(ctx.config, length)
            step_columns[length] = {"step": example_codec.varint_column(steps)}
          step = step_columns[length]
        n = len(step["step"][1])
        if n == 0:
          row["episodes_without_examples"] += 1
        columns = dict(examples, episode_index=np.full(n, ep["index"], np.int64))
        for pieces in codec.encode_chunks(columns, ctx.chunk_size, encoded=step):
          writer.write(pieces)
      row["episodes"].append([ep["index"], ep["episode_id"], n])
      row["examples"] += n
      if ctx.progress_dir and (done == len(episodes) or time.monotonic() - reported > 0.5):
        progress.report(ctx.progress_dir, task.shard, done)  # throttled: a report is a file rename
        reported = time.monotonic()
  row["records"], row["bytes"] = writer.records_written, writer.bytes_written
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.io.gfile.rename(tmp, path, overwrite=True)
  storage.write_json(f"{ctx.rows_dir}/{task.shard:05d}.json", row)
  return row


def _code_version() -> str:
  return version.code_version()


def beam_flags(beam_args: Sequence[str], num_tasks: int) -> List[str]:
  """The explicit Beam flag list (never the process's argv): DirectRunner unless a runner is
  named; on Dask, one task per bag partition unless the caller partitions."""
  flags = [a for a in beam_args if a != "--"]
  runner = None
  for i, a in enumerate(flags):
    if a.startswith("--runner="):
      runner = a.split("=", 1)[1]
      flags[i] = f"--runner={RUNNER_ALIASES.get(runner.lower(), runner)}"
    elif a == "--runner" and i + 1 < len(flags):
      runner = flags[i + 1]
      flags[i + 1] = RUNNER_ALIASES.get(runner.lower(), runner)
  if runner is None:
    flags.insert(0, f"--runner={RUNNER_ALIASES['direct']}")
  runner = RUNNER_ALIASES.get((runner or "direct").lower(), runner or "DirectRunner")
  if runner == DASK_RUNNER and not any(a.startswith(("--dask_npartitions", "--dask_partition_size"))
                                        for a in flags):
    flags.append(f"--dask_npartitions={max(1, num_tasks)}")
  return flags


def _run_beam(tasks: List[sources.Task], ctx: _TaskContext, flags: List[str]) -> None:
  """Runs the pipeline on a driver thread; this (calling) thread only waits, so it takes Ctrl-C.

  Why not call `p.run()` here: the in-process runner runs tasks on the calling thread and wraps
  whatever a task raises, KeyboardInterrupt included, into a RuntimeError (Ctrl-C became a
  traceback), and with several worker threads the tasks kept writing into the temp dir after it
  was removed. Python delivers signals to the main thread only, so with Beam on another thread
  the KeyboardInterrupt lands in the wait below; `_cancel` then stops the tasks before it
  propagates to the caller's cleanup.
  """
  import apache_beam as beam  # pylint: disable=import-outside-toplevel
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel
  options = PipelineOptions(flags=flags)
  p = beam.Pipeline(options=options)
  _ = (p | "ShardTasks" >> beam.Create(tasks, reshuffle=_redistribute(options))
       | "RelabelAndWrite" >> beam.Map(run_task, ctx))
  outcome = {}
  # An Event, not Thread.join: in Python 3.11 a join interrupted by Ctrl-C marks a still-running
  # thread as stopped (its lock is released by the interrupted waiter), so a second join returns
  # at once while the tasks are still writing.
  finished = threading.Event()

  def drive():
    try:
      outcome["result"] = result = p.run()  # the in-process runner returns when all tasks are done
      try:
        result.wait_until_finish()
      finally:
        client = getattr(result, "client", None)  # DaskRunner leaves its client open
        if client is not None:
          client.close()
    except BaseException as e:  # pylint: disable=broad-except  (handed to the waiting thread)
      outcome["error"] = e
    finally:
      finished.set()

  threading.Thread(target=drive, name="relabel-beam-driver", daemon=True).start()
  try:
    while not finished.wait(0.2):
      pass
  except KeyboardInterrupt:
    _cancel(ctx, outcome, finished)
    raise
  if "error" in outcome:
    raise outcome["error"]


def _redistribute(options) -> bool:
  """Whether `Create` reshuffles the tasks (Beam's default): a reshuffle lets a runner spread them
  over workers, but on the in-process runner with one worker it only adds a GroupByKey stage (a
  second bundle: ~0.1 CPU-s of runner set-up per run) and moves nothing. DaskRunner replaces
  `Create` with its own (a bag of `--dask_npartitions` partitions), so the flag does not matter there.
  """
  from apache_beam.options.pipeline_options import DirectOptions, StandardOptions  # pylint: disable=import-outside-toplevel
  return not (options.view_as(StandardOptions).runner == RUNNER_ALIASES["direct"]
              and options.view_as(DirectOptions).direct_num_workers == 1)


@contextlib.contextmanager
def _collector_skips_existing_objects():
  """During the run, Python's cyclic garbage collector ignores the objects that existed before it.

  Why: after `import tensorflow, apache_beam` the heap holds millions of long-lived objects, and
  the run's allocations (Beam's pipeline protos, TFDS feature specs, per-chunk buffers) push the
  collector into a full collection, which walks all of them: one costs 0.5-0.8 CPU-s here, a
  quarter of a 256-episode run. `gc.freeze` moves the existing objects out of the collector's
  view until `gc.unfreeze` puts them back at the end (nothing is freed or leaked by this; the
  run's own garbage is still collected). Left alone if the caller froze objects itself or
  disabled the collector.
  """
  if not gc.isenabled() or gc.get_freeze_count():
    yield
    return
  gc.freeze()
  try:
    yield
  finally:
    gc.unfreeze()


def _cancel(ctx: _TaskContext, outcome: Dict, finished: threading.Event) -> None:
  """Stops an interrupted run's tasks and waits (bounded) for them, so none writes into the temp
  dir after the caller removes it (a task that still does fails on the missing dir).

  Beam's worker threads print the traceback of every failed bundle to sys.stderr; the ones the
  cancel causes are expected, so they are dropped: the user sees only "interrupted".
  """
  _CANCELLED_RUNS.add(ctx.run_id)
  with contextlib.redirect_stderr(io.StringIO()):
    result = outcome.get("result")
    if result is not None and hasattr(result, "cancel"):
      try:
        result.cancel()  # Dask: cancels queued tasks on the cluster's workers
      except Exception:  # pylint: disable=broad-except  (runners without cancel raise; tasks stop anyway)
        pass
    if finished.wait(CANCEL_WAIT_S):  # else tasks may still be running: they must keep seeing the cancel
      _CANCELLED_RUNS.discard(ctx.run_id)


def run_relabel(source: str, output: str, config: relabeled.RelabelConfig,
                beam_args: Sequence[str] = (), pipeline: PipelineConfig = PipelineConfig(),
                overwrite: bool = False, name: Optional[str] = None, show_progress: bool = True) -> Dict:
  """Runs the relabeling pipeline; returns the lineage record written next to the data.

  `output` becomes `<output>/<name>/<version>/` (`tfds.load(name, data_dir=output)`, or
  `relay_data.relabeled.load(output)`). `beam_args` are Beam pipeline options, e.g.
  ["--runner=direct", "--direct_num_workers=2"] or ["--runner=dask",
  "--dask_client_address=127.0.0.1:8786"]; they are the only flags Beam parses. With
  `show_progress`, a bar counts relabeled episodes (live when workers share this filesystem).
  """
  with _collector_skips_existing_objects():
    return _run_relabel(source, output, config, beam_args, pipeline, overwrite, name, show_progress)


def _run_relabel(source, output, config, beam_args, pipeline, overwrite, name, show_progress) -> Dict:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  source_dir = rlds_io.resolve_dataset_dir(source) if storage.is_local(source) else source.rstrip("/")
  builder = (rlds_io.require_episodes(source_dir) if storage.is_local(source_dir)  # a relabeled dataset is no source
             else tfds.builder_from_directory(source_dir))
  dims = sources.check_source(builder, source_dir, executed_action=config.perturbation_threshold is not None)
  num_episodes = int(builder.info.splits["train"].num_examples)
  if num_episodes == 0:
    raise DataError("source dataset has no episodes", path=source_dir)
  per_task = (-(-num_episodes // pipeline.num_shards) if pipeline.num_shards else pipeline.episodes_per_shard)
  tasks = sources.plan_tasks(builder, source_dir, per_task)
  name = paths.check_name(name or f"relabeled_{config.level.replace('-', '_')}")  # never a path
  example_dims = relabeled.example_dims(config.level, dims["observation"], dims["goal_state"], dims["action"],
                                        config.action_chunk)
  flags = beam_flags(beam_args, len(tasks))

  with storage.atomic_directory(output, overwrite=overwrite) as tmp:
    data_dir = f"{tmp}/{name}/{DATASET_VERSION}"
    rows_dir = f"{tmp}/_rows"
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.io.gfile.makedirs(data_dir)
    tf.io.gfile.makedirs(rows_dir)
    progress_dir = f"{tmp}/_progress" if storage.is_local(tmp) else None
    ctx = _TaskContext(source_dir, config, dims, example_dims, data_dir, rows_dir, name, len(tasks),
                       pipeline.chunk_size, progress_dir, run_id=uuid.uuid4().hex)
    try:
      with progress.watch(progress_dir or "", num_episodes, f"relabeling ({config.level})", "ep",
                          enabled=show_progress and progress_dir is not None):
        _run_beam(tasks, ctx, flags)
    except Exception as e:  # Runners wrap worker errors; surface ours unwrapped.
      raise _unwrap(e) from e
    rows = []
    for task in tasks:
      row_path = f"{rows_dir}/{task.shard:05d}.json"
      if not tf.io.gfile.exists(row_path):
        raise RuntimeError(f"the runner finished but task {task.shard} left no row ({row_path})")
      rows.append(storage.read_json(row_path))
    tf.io.gfile.rmtree(rows_dir)
    for stale in tf.io.gfile.glob(f"{data_dir}/*.tmp-*"):  # from attempts that died mid-write
      tf.io.gfile.remove(stale)
    if progress_dir:
      tf.io.gfile.rmtree(progress_dir)
    lineage = _write_metadata(data_dir, name, config, builder, source_dir, num_episodes, example_dims,
                              rows, flags)
  return lineage


def _write_metadata(data_dir, name, config, builder, source_dir, num_episodes, example_dims, rows, flags):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  features = relabeled.features_of(example_dims)
  template = tfds.core.ShardedFileTemplate(data_dir=data_dir, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
                                           dataset_name=name, split="train", filetype_suffix="tfrecord")
  tfds.folder_dataset.write_metadata(
      data_dir=data_dir, features=features, version=DATASET_VERSION, check_data=False,
      filename_template=template,
      description=(f"relay relabeled examples ({config.level} level), chunked: each record holds up to "
                   f"a chunk of consecutive examples of one episode; read examples with "
                   f"as_dataset(split='train').unbatch(). Example count: metadata.json counts."),
      split_infos=[tfds.core.SplitInfo(name="train", shard_lengths=[r["records"] for r in rows],
                                       num_bytes=sum(r["bytes"] for r in rows), filename_template=template)])
  counts = {k: sum(r[k] for r in rows) for k in
            ("episodes_read", "episodes_skipped_too_short", "episodes_without_examples")}
  counts["examples_written"] = sum(r["examples"] for r in rows)
  counts["records_written"] = sum(r["records"] for r in rows)
  lineage = {
      "created_by": "pipelines.relabel",
      "format": dict(relabeled.FORMAT),
      "name": name,
      "code_version": _code_version(),
      "config": config.to_json(),
      "fields": example_dims,
      "source": {"path": source_dir, "name": builder.info.name, "version": str(builder.info.version),
                 "fingerprint": relabeled.fingerprint(source_dir), "num_episodes": num_episodes},
      "counts": counts,
      "num_shards": len(rows),
      "shard_examples": [r["examples"] for r in rows],
      "episodes": [e for r in rows for e in r["episodes"]],
      "beam_options": list(flags),
      **(goal_space.provenance_of_episode_dataset(source_dir) if storage.is_local(source_dir)
         else {}),  # spec + env_settings, carried along
  }
  if counts["episodes_read"] != num_episodes:
    raise RuntimeError(f"tasks read {counts['episodes_read']} episodes, the source has {num_episodes}")
  storage.write_json(f"{data_dir}/metadata.json", lineage)
  return lineage


def _unwrap(error: Exception) -> Exception:
  """Our DataError from a worker, if it is in the exception chain (runners re-raise it wrapped)."""
  seen = error
  while seen is not None:
    if isinstance(seen, DataError):
      return seen
    seen = seen.__cause__ or seen.__context__
  return error
