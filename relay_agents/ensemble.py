"""Policy ensembles: one model whose level acts with the mean of several trained policies.

`make_ensemble([m0, m1, m2], out)` writes a model directory that acts like m0 except that the
ensembled level (by default the RIL low level, or a flat model's one policy) acts with the mean of
the members' actions (`gcbc.acting.PolicyEnsembleFn`). Every command that acts or evaluates
(`relay eval`, `relay diagnose oracle|failures`) takes it as a model; finetuning refuses it (a
policy gradient needs one network).

Why: relay IL's low levels trained from different seeds on the same data fit it equally well yet
follow the high level's imperfect subgoals very differently, and the closed-loop result of a seed
is mostly its low level's (docs/results.md, session 40). Measured there: the mean of three
1,600-episode low levels lifted every seed's high level (2.57 elements against 2.02), but at the
400-episode table's setting 2 or 3 members did no better (2.05, 1.92 against 2.10), so it is an
option, not a default. Beyond the paper, which trains one low level; it costs one training per member.

Layout: `<level>/` holds member 0, `<level>.<i>/` member i (policy.pkl, and residual.pkl when the
member was finetuned with one); the record's `members` lists them and `train_config.ensemble_of`
names each source model with its fingerprint. The other levels are the first model's.
"""
import os
import shutil
from typing import List, Optional, Sequence

from relay_agents import models
from relay_data import atomic, goal_space, version
from relay_data.errors import DataError

FILES = (models.POLICY, models.RESIDUAL)  # what a member's dir needs to act (no learner checkpoint)


def default_levels(record: models.ModelRecord) -> List[str]:
  """The RIL low level (the one the closed-loop result follows), or a flat model's one policy."""
  return ["low"] if record.agent == "ril" else sorted(record.levels)


def member_names(level: str, count: int) -> List[str]:
  return [level] + [f"{level}.{i}" for i in range(1, count)]


def check_compatible(model_dirs: Sequence[str], records: Sequence[models.ModelRecord], levels: Sequence[str]) -> None:
  """Refuses (ValueError naming the model) models that cannot form one ensemble: the same agent,
  levels, windows, observation spec and goal space, environment settings, and members of each
  ensembled level that predict the same thing the same way (`acting.check_members`)."""
  from relay_agents.gcbc import acting  # pylint: disable=import-outside-toplevel
  first, where = records[0], model_dirs[0]
  for model_dir, record in zip(model_dirs, records):
    if record.members:
      raise ValueError(f"{model_dir} is already a policy ensemble; give the models it was made from")
  for model_dir, record in zip(model_dirs[1:], records[1:]):
    mismatch = [name for name, a, b in (
        ("agent", first.agent, record.agent),
        ("levels", sorted(first.levels), sorted(record.levels)),
        ("window (W_l)", first.window, record.window),
        ("window_high (W_h)", first.window_high, record.window_high),
        ("observation spec and goal space", first.spec, record.spec),
        ("environment settings", goal_space.normalize_env_settings(first.env_settings),
         goal_space.normalize_env_settings(record.env_settings))) if a != b]
    if mismatch:
      raise ValueError(f"{model_dir} cannot join {where} in an ensemble: its {', '.join(mismatch)} differ")
  for level in levels:
    if level not in first.levels:
      raise ValueError(f"{where} has no level {level!r} (levels: {', '.join(sorted(first.levels))})")
    configs = [models.load_policy(os.path.join(m, level))["config"] for m in model_dirs]
    try:
      acting.check_members(configs)
    except ValueError as e:
      raise ValueError(f"level {level!r} of {', '.join(model_dirs)}: {e}") from e


def make_ensemble(model_dirs: Sequence[str], out: str, levels: Optional[Sequence[str]] = None,
                  overwrite: bool = False) -> str:
  """Writes the ensemble of `model_dirs` (two or more trained models) to `out` and returns it.

  `levels`: the levels whose members are averaged (None: `default_levels`); every other level is
  the first model's. Built in a temp dir and renamed into place, so a failure leaves nothing."""
  if len(model_dirs) < 2:
    raise ValueError(f"an ensemble needs at least 2 models, got {len(model_dirs)}")
  if len({os.path.realpath(m) for m in model_dirs}) != len(model_dirs):
    raise ValueError("the same model is given twice: an ensemble's members must be different models")
  records = [models.read_record(m) for m in model_dirs]
  levels = list(levels) if levels else default_levels(records[0])
  check_compatible(model_dirs, records, levels)
  fingerprints = [models.fingerprint(m) for m in model_dirs]
  first = records[0]
  record = models.ModelRecord(**{**first.to_dict(), "code_version": version.code_version()})
  record.members = {level: member_names(level, len(model_dirs)) for level in levels}
  record.train_config = {**first.train_config, "ensemble_of": [
      {"path": os.path.abspath(m), "fingerprint": f} for m, f in zip(model_dirs, fingerprints)]}
  record.levels = {name: ({**summary, "members": [r.levels[name] for r in records]} if name in levels else summary)
                   for name, summary in first.levels.items()}
  with atomic.atomic_directory(out, overwrite=overwrite) as tmp:
    for name in first.levels:
      sources = [os.path.join(m, name) for m in model_dirs] if name in levels else [os.path.join(model_dirs[0], name)]
      for source, member in zip(sources, member_names(name, len(sources))):
        _copy_policy(source, os.path.join(tmp, member))
    models.write_record(tmp, record)
  return out


def _copy_policy(source: str, dest: str) -> None:
  if not os.path.isfile(os.path.join(source, models.POLICY)):
    raise DataError("missing (trained policy)", path=os.path.join(source, models.POLICY))
  os.makedirs(dest)
  for name in FILES:
    if os.path.isfile(os.path.join(source, name)):
      shutil.copyfile(os.path.join(source, name), os.path.join(dest, name))
