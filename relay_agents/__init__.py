"""Acme agents for Relay Policy Learning.

`acme_compat` is imported first so that every `relay_agents` module can `import acme`.
"""
from relay_agents import acme_compat  # noqa: F401  (must precede any acme import)
