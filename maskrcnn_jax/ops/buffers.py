"""Buffer helpers for loops inside jitted programs."""

import jax
import jax.numpy as jnp


def zeros_after(x, shape, dtype):
  """Zeros that XLA can only materialise once `x` exists.

  A loop-carried zero buffer depends on nothing, so XLA's scheduler may
  allocate it long before the loop runs, e.g. a backward pass's gradient
  buffer through the forward pass's peak. Adding 0 * x[0] (not folded for
  floats) orders it after x; a non-finite x[0] makes the buffer non-finite,
  where the gradients being computed are not finite anyway.
  """
  first = jax.lax.stop_gradient(x).reshape(-1)[0]
  return jnp.zeros(shape, dtype) + (0 * first).astype(dtype)
