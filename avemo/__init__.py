"""avemo: continuous audio-visual emotion recognition (arousal/valence every 40 ms) in JAX/Flax."""

from avemo import xla_flags as _xla_flags

__version__ = "0.1.0"

_xla_flags.apply_defaults()  # before JAX's first computation (see avemo/xla_flags.py)
