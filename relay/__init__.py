"""relay: Relay Policy Learning (Gupta et al., CoRL 2019) as RLDS + Beam + Reverb + Acme software.

This package holds the command line (`relay ...`) and the stack doctor. The library lives in
`relay_data` (RLDS schema, IO, converters, relabeling math), `pipelines` (Beam), `datasets`
(TFDS builders) and `relay_agents` (Acme agents); none of them imports this package. The
version string lives in `relay_data.version` and the process environment defaults in
`relay_data.process_env` (applied here, before anything heavy is imported).
"""
from relay_data import process_env
from relay_data.version import __version__  # noqa: F401  (re-exported: `relay --version`)

process_env.apply_defaults()
