"""ptuning_jax: prompt tuning of frozen pretrained models in JAX/Flax.

The core package imports without TensorFlow; seqio and TensorFlow are used
only under `ptuning_jax.data`.
"""

__version__ = "0.1.0"
