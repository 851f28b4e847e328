"""avemo: continuous audio-visual emotion recognition (arousal/valence every 40 ms) in JAX/Flax."""

__version__ = "0.1.0"
