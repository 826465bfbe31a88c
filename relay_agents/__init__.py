"""Acme agents for Relay Policy Learning.

Every module here that imports `acme` imports `relay_agents.acme_compat` first (it patches
dm-acme 0.4.0 for this stack). The package itself imports nothing heavy, so light modules such
as `relay_agents.gcbc.config` can be read by the CLI without loading JAX and Acme.
"""
