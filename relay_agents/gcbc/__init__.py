"""Goal-conditioned behaviour cloning, the building block of Relay Imitation Learning.

One agent class serves both hierarchy levels and the baselines; only the data differ:
  low level   π_l(a | s, g_l)      examples (observation, goal, action)
  high level  π_h(g_l | s, g_h)    examples (observation, goal, subgoal)   (config.target="subgoal")
  GCBC        π(a | s, g)          flat relabeled or final-goal examples
  BC          π(a | s)             (config.use_goal=False)
Split as in Acme: config / networks / builder / learning / acting.
"""
from relay_agents.gcbc.config import GoalBCConfig  # noqa: F401
