"""Relay Policy Learning's second phase: RL finetuning of the relay-IL hierarchy (NPG/DAPG/IRIL-RPL).

Acme's split: `config` (typed hyper-parameters), `networks` (value baselines next to the GCBC
policy networks), `learning` (the NPG learner, pure math in `npg`), `acting` (the sampling
hierarchical actor with a Reverb adder), `builder` (tables, adder, actor, learner), plus `env`
(one compound goal as a dm_env) and `rewards` (pure reward functions). `policy_io` is the one
place that reads and writes trained models (through `relay_agents.models`).
"""
