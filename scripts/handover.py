"""Where along a skill can a learned policy take over from the scripted expert?

A research script (docs/results.md, "Where the policy can take over"), not part of the toolkit's
API. For each kitchen element and trial: reset the kitchen, let the expert run that element's
skill up to a phase, then hand control to the model (goal: the play data's initial state with
the element done, as `relay eval --goal` builds it) for 80 steps (200 from reset). Phases:
reset (the policy does everything), standoff (the expert has brought the open hand to 8-14 cm in
front of the contact point, where its final approach starts), contact (the hand is at the
contact point), grasped (the fingers have closed on the handle or knob). Done = the env's
completion test held at some step after the handover; trials the expert already finished are
left out. Deterministic in the trial index.

usage: python scripts/handover.py MODEL PLAY [--trials 10] [--replan N]
"""
import argparse

import dm_env
import numpy as np

from relay_agents import models
from relay_data import kitchen, rlds_io
from relay_data.play import controller as ctl
from relay_data.play import skills

PHASES = ("reset", "standoff", "contact", "grasped")
NO_GRASP = ("light switch", "slide cabinet", "kettle")  # pushed, never grasped


def trial(env, actor, start_state, element: str, phase: str, index: int):
  """True/False: the policy finished the element after taking over at `phase`; None: the expert
  had already finished it."""
  u = env.unwrapped
  rng = np.random.default_rng([index, 3])
  obs, _ = env.reset(seed=index)
  arm = ctl.ArmController(u.model, u.data)
  scene = skills.Scene(u.model, u.data, arm)
  was_final = False
  if phase != "reset":
    for pos, rot, grip in skills.SKILLS[element](scene, rng):
      if phase == "standoff" and scene.final_approach:
        break
      after_approach = was_final and not scene.final_approach
      if phase == "contact" and after_approach:
        break
      if phase == "grasped" and after_approach and grip < 0.01 and np.abs(u.data.qvel[7:9]).max() < 0.01:
        break
      was_final = was_final or scene.final_approach
      obs, *_ = env.step(arm.action(obs["observation"], pos, rot, grip))
  if scene.element_error(element) < kitchen.BONUS_THRESH:
    return None
  actor.set_goal(kitchen.set_goal_state(start_state, [element]))
  actor.observe_first(dm_env.restart(obs["observation"]))
  for _ in range(200 if phase == "reset" else 80):
    action = actor.select_action(obs["observation"].astype(np.float32))
    obs, reward, *_ = env.step(action)
    actor.observe(action, dm_env.transition(np.float32(reward), obs["observation"]))
    if scene.element_error(element) < kitchen.BONUS_THRESH:
      return True
  return False


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("model", help="model dir (ril or flat)")
  parser.add_argument("play", help="the play dataset the model was trained on (its initial state)")
  parser.add_argument("--trials", type=int, default=10, help="trials per element and phase")
  parser.add_argument("--replan", type=int, default=None,
                      help="ril: the high level re-plans every N steps (default: every W_l), as `relay eval --replan`")
  args = parser.parse_args()
  start_state = next(iter(rlds_io.iter_episodes(args.play)))["goal_state"][0]  # the kitchen's initial state
  env = kitchen.make_env(max_episode_steps=600, settings=models.env_settings(models.read_record(args.model)),
                         terminate_on_tasks_completed=False)
  actor = models.make_actor(args.model, seed=0, replan=args.replan)
  print(f"{args.model}: elements done after the policy takes over (of the trials the expert left undone)")
  print("| element | " + " | ".join(PHASES) + " |")
  print("|---" * (len(PHASES) + 1) + "|")
  for element in kitchen.ELEMENTS:
    cells = []
    for phase in PHASES:
      if phase == "grasped" and element in NO_GRASP:
        cells.append("-")
        continue
      res = [r for r in (trial(env, actor, start_state, element, phase, i) for i in range(args.trials)) if r is not None]
      cells.append(f"{sum(res)}/{len(res)}")
    print(f"| {element} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
  main()
