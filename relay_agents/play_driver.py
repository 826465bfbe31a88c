"""A trained agent driving the generator's policy bursts (`relay generate --perturb dagger`).

DAgger (Ross et al., 2011) collects the expert's labels on the states the *learner* visits. The
scripted expert can label any state, so during a policy burst the generator executes this
driver's actions while it keeps storing the expert's: the data then holds the corrections from
exactly where the trained policy drifts. The driver is the model's own acting policy
(`models.make_actor`: the relay hierarchy for a RIL model, deterministic), given the episode's
compound goal, as `relay eval` gives it.
"""
import dm_env
import numpy as np

from relay_agents import models

FACTORY = "relay_agents.play_driver:ModelDriver"  # = datasets.kitchen_play DRIVER_FACTORY


class ModelDriver:
  """`relay_data.play.perturb.Driver` over a saved model; built once per generator process."""

  def __init__(self, model_dir: str):
    self.model_dir = model_dir
    self.actor = models.make_actor(model_dir, seed=0, deterministic=True)

  def start(self, goal_state: np.ndarray, observation: np.ndarray) -> None:
    """A new burst: the actor starts over (a RIL high level picks a subgoal at once)."""
    self.actor.set_goal(goal_state)
    self.actor.observe_first(dm_env.restart(np.asarray(observation, np.float32)))

  def action(self, observation: np.ndarray) -> np.ndarray:
    action = self.actor.select_action(np.asarray(observation, np.float32))
    self.actor.observe(action, None)  # only counts the step (the re-planning clock)
    return action
