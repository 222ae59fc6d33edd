"""GroupNorm forward + backward: ops/group_norm.py against plain autodiff.

  python -m bench.group_norm [--iters 30]

For the quick start's shapes (4 images: the layer1 map 48 x 64 x 64 with a
valid-region mask, the mask head's 128 RoIs of 14 x 14 x 64 without) times
the jitted gradient of sum(GN(x) * cot) with respect to x, scale and bias
(median of --iters runs after a warm-up), for ops/group_norm.py and for
autodiff of the same two-pass formula written with jnp reductions (the
layer before ops/group_norm.py).
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from bench import timing
from maskrcnn_jax.ops import group_norm as group_norm_op


def plain_group_norm(x, scale, bias, mask, groups, eps=1e-5):
  """Two-pass statistics from per-channel jnp sums, autodiff backward."""
  b, h, w, c = x.shape
  m = 1.0 if mask is None else mask
  count = (h * w if mask is None else
           jnp.sum(mask, axis=(1, 2, 3))[:, None]) * (c // groups)

  def group_total(per_channel):
    sums = per_channel.reshape(b, groups, c // groups).sum(-1)
    return jnp.repeat(sums, c // groups, axis=1)

  mean = group_total(jnp.sum(x * m, axis=(1, 2))) / count
  d = x - mean[:, None, None, :]
  var = group_total(jnp.sum(jnp.square(d) * m, axis=(1, 2))) / count
  return d * jax.lax.rsqrt(var + eps)[:, None, None, :] * scale + bias


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--iters', type=int, default=30)
  args = p.parse_args()
  rng = np.random.default_rng(0)
  print(f'device: {jax.devices()[0].device_kind}; GN forward + backward, '
        f'median of {args.iters}')
  for shape, masked, groups in [((4, 48, 64, 64), True, 16),
                                ((128, 14, 14, 64), False, 16)]:
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    cot = jnp.asarray(rng.normal(size=shape), jnp.float32)
    c = shape[-1]
    scale = jnp.asarray(rng.normal(size=c), jnp.float32)
    bias = jnp.asarray(rng.normal(size=c), jnp.float32)
    mask = None
    if masked:  # the lower quarter of every image is canvas padding
      m = np.ones(shape[:3] + (1,), np.float32)
      m[:, 3 * shape[1] // 4:] = 0
      mask = jnp.asarray(m)
    row = []
    for name, f in [('plain autodiff', plain_group_norm),
                    ('ops/group_norm', lambda x, s, b, m, g:
                     group_norm_op.group_norm(x, s, b, m, groups=g))]:
      grad = jax.jit(jax.grad(
          lambda x, s, b, m, cot, f=f: jnp.sum(f(x, s, b, m, groups) * cot),
          argnums=(0, 1, 2)))
      ms = 1e3 * timing.median_seconds(grad, (x, scale, bias, mask, cot),
                                        args.iters)
      row.append(f'{name} {ms:.2f} ms')
    print(f'{shape} {"masked" if masked else "no mask"}: ' + '; '.join(row))


if __name__ == '__main__':
  main()
