"""maskrcnn_jax: MMDetection's Mask R-CNN model zoo in JAX/Flax."""

from maskrcnn_jax import target as _target

__version__ = '0.1.0'

# XLA:CPU defaults (target.CPU_XLA_FLAGS), before any backend starts.
_target.set_cpu_xla_flags()
