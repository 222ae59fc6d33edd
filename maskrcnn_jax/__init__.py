"""maskrcnn_jax: MMDetection's Mask R-CNN model zoo in JAX/Flax."""

__version__ = '0.1.0'
