"""How precisely must a hand arrive for the scripted expert's skill to still work?

A research script (docs/results.md, "How wide is each skill's basin"), not part of the toolkit's
API. Rollouts miss contact elements with the hand some centimetres off the handle, knob or
switch; this asks how far off the *expert itself* may be. Each trial resets the kitchen, makes
the expert believe the element's contact site is `delta` metres off its true place (a random
direction), runs that element's skill from the reset pose (no perturbations), and counts the
element done if the environment's completion test held at any step (the env's test is sticky,
as in evaluation). Deterministic in (trial, delta, element).

usage: python scripts/skill_basin.py [--trials 20] [--deltas 0,0.01,0.02,0.03,0.05]
"""
import argparse

import numpy as np

from relay_data import kitchen
from relay_data.play import controller as ctl
from relay_data.play import skills

# The site (or body, for the kettle) each skill aims at.
TARGETS = {"microwave": ("site", "microhandle_site"), "light switch": ("site", "light_site"),
           "slide cabinet": ("site", "slide_site"), "hinge cabinet": ("site", "hinge_site2"),
           "bottom burner": ("site", "knob2_site"), "top burner": ("site", "knob4_site"),
           "kettle": ("body", "kettle")}


class OffsetScene(skills.Scene):
  """The skill's view of the kitchen with one site or body displaced by a fixed offset."""

  def __init__(self, model, data, arm, kind: str, name: str, offset: np.ndarray):
    super().__init__(model, data, arm)
    self._kind, self._name, self._offset = kind, name, offset

  def site(self, name):
    return super().site(name) + (self._offset if (self._kind, name) == ("site", self._name) else 0.0)

  def body_pos(self, name):
    return super().body_pos(name) + (self._offset if (self._kind, name) == ("body", self._name) else 0.0)


def trial(env, element: str, delta: float, index: int, max_steps: int = 300) -> bool:
  """One skill run with its target believed `delta` m off; True if the element got done."""
  u = env.unwrapped
  rng = np.random.default_rng([index, int(round(delta * 1000)), kitchen.ELEMENTS.index(element)])
  obs, _ = env.reset(seed=index)
  arm = ctl.ArmController(u.model, u.data)
  direction = rng.normal(size=3)
  offset = delta * direction / np.linalg.norm(direction)
  scene = OffsetScene(u.model, u.data, arm, *TARGETS[element], offset)
  best = scene.element_error(element)
  for step, (pos, rot, grip) in enumerate(skills.SKILLS[element](scene, rng)):
    obs, *_ = env.step(arm.action(obs["observation"], pos, rot, grip))
    best = min(best, scene.element_error(element))
    if step >= max_steps:
      break
  return best < kitchen.BONUS_THRESH


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--trials", type=int, default=20, help="trials per element and offset")
  parser.add_argument("--deltas", default="0,0.01,0.02,0.03,0.05", help="offsets in metres")
  args = parser.parse_args()
  deltas = [float(d) for d in args.deltas.split(",")]
  env = kitchen.make_env(max_episode_steps=400, settings=kitchen.DEFAULT_SETTINGS,
                         terminate_on_tasks_completed=False)
  print("| element | " + " | ".join(f"{d * 100:g} cm" for d in deltas) + " |")
  print("|---" * (len(deltas) + 1) + "|")
  for element in kitchen.ELEMENTS:
    done = [sum(trial(env, element, d, i) for i in range(args.trials)) for d in deltas]
    print(f"| {element} | " + " | ".join(f"{k}/{args.trials}" for k in done) + " |", flush=True)


if __name__ == "__main__":
  main()
