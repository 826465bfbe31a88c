"""Does a learned policy do element B as well after element A as it does from reset?

A research script (docs/results.md, "After a subtask"), not part of the toolkit's API. For every
ordered pair (A, B) of kitchen elements, A != B (42 pairs; the trial index is the pair's), and
each condition:
  reset   the policy does B from the kitchen's reset;
  expert  the scripted expert does A (its whole skill: grasp, move, let go, back off), then the
          policy does B;
  rehome  as expert, then the expert's loose re-home toward the home posture, as the play data
          does between subtasks;
  policy  the policy does A (goal: A done, up to --steps steps); if it does, then B.
The policy's goal for an element is the current observed goal-space state with that element set
done (as `relay eval --sequential` builds it). B counts as done when the element's own error is
below the env's threshold within --steps steps. Deterministic in the pair index.

usage: python scripts/after_subtask.py MODEL --out rows.jsonl [--conds reset,expert,rehome,policy]
       [--replan N] [--steps 200]
Rows are appended (one JSON line per trial); a summary per condition is printed at the end.
"""
import argparse
import collections
import itertools
import json

import dm_env
import numpy as np

from relay_agents import models
from relay_data import kitchen
from relay_data.play import controller as ctl
from relay_data.play import skills

CONDITIONS = ("reset", "expert", "rehome", "policy")


def run_policy(env, actor, obs, scene, element, steps):
  """(observation, steps taken) once the policy has done `element`; (observation, None) if not."""
  goal = kitchen.set_goal_state(kitchen.goal_state_from_observation(obs["observation"]), [element])
  actor.set_goal(goal)
  actor.observe_first(dm_env.restart(obs["observation"]))
  for t in range(steps):
    action = actor.select_action(obs["observation"].astype(np.float32))
    obs, reward, *_ = env.step(action)
    actor.observe(action, dm_env.transition(np.float32(reward), obs["observation"]))
    if scene.element_error(element) < kitchen.BONUS_THRESH:
      return obs, t + 1
  return obs, None


def trial(env, actor, a, b, cond, index, steps):
  """One row: the pair, the condition, whether (and in how many steps) A and then B were done."""
  u = env.unwrapped
  rng = np.random.default_rng([index, 7])
  obs, _ = env.reset(seed=index)
  arm = ctl.ArmController(u.model, u.data)
  scene = skills.Scene(u.model, u.data, arm)
  row = {"a": a, "b": b, "cond": cond, "index": index}
  if cond in ("expert", "rehome"):
    commands = skills.SKILLS[a](scene, rng)
    if cond == "rehome":
      commands = itertools.chain(commands, skills.rehome(scene, rng))
    n, ever = 0, False
    for pos, rot, grip in commands:
      obs, *_ = env.step(arm.action(obs["observation"], pos, rot, grip))
      n += 1
      ever = ever or scene.element_error(a) < kitchen.BONUS_THRESH
    row["a_steps"] = n
    if not ever:
      row["b_steps"] = "a_failed"
      return row
  elif cond == "policy":
    obs, n = run_policy(env, actor, obs, scene, a, steps)
    row["a_steps"] = n
    if n is None:
      row["b_steps"] = "a_failed"
      return row
  row["arm_home_err"] = float(np.abs(u.data.qpos[ctl.ARM] - arm.home).max())
  _, row["b_steps"] = run_policy(env, actor, obs, scene, b, steps)
  return row


def summarize(rows):
  """Per condition: A failed, B done / tried, median steps to B, B done per element."""
  lines = []
  by = collections.defaultdict(list)
  for r in rows:
    by[r["cond"]].append(r)
  for cond in CONDITIONS:
    tried = [r for r in by.get(cond, []) if r["b_steps"] != "a_failed"]
    if not by.get(cond):
      continue
    done = [r for r in tried if r["b_steps"] is not None]
    per = ", ".join(f"{e} {sum(r['b'] == e for r in done)}/{sum(r['b'] == e for r in tried)}"
                    for e in kitchen.ELEMENTS)
    median = np.median([r["b_steps"] for r in done]) if done else float("nan")
    lines.append(f"{cond:7s} A failed {len(by[cond]) - len(tried):2d}, B done {len(done)}/{len(tried)}, "
                 f"median {median:.0f} steps; {per}")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("model")
  p.add_argument("--out", required=True, help="JSONL rows, appended")
  p.add_argument("--conds", default=",".join(CONDITIONS), help="comma-separated conditions")
  p.add_argument("--replan", type=int, default=None, help="ril: re-plan every N steps (default W_l)")
  p.add_argument("--steps", type=int, default=200, help="policy steps per element (default 200)")
  args = p.parse_args()
  conds = args.conds.split(",")
  if not set(conds) <= set(CONDITIONS):
    p.error(f"--conds must be among {', '.join(CONDITIONS)}")
  record = models.read_record(args.model)
  env = kitchen.make_env(max_episode_steps=2000, settings=models.env_settings(record),
                         terminate_on_tasks_completed=False)
  actor = models.make_actor(args.model, seed=0, replan=args.replan)
  pairs = [(a, b) for a in kitchen.ELEMENTS for b in kitchen.ELEMENTS if a != b]
  rows = []
  with open(args.out, "a") as f:
    for cond in conds:
      for i, (a, b) in enumerate(pairs):
        rows.append(trial(env, actor, a, b, cond, i, args.steps))
        f.write(json.dumps(rows[-1]) + "\n")
        f.flush()
  print(summarize(rows))


if __name__ == "__main__":
  main()
