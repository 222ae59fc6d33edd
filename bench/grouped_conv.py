"""Kernel gradient of one grouped 3x3 convolution: XLA's vs 'sliced'.

  python -m bench.grouped_conv [--shape 1 100 152 256] [--groups 32]

Times d(sum(dy * conv(x, K))) / dK for both strategies of
`ops/grouped_conv.py` (jitted, one warm-up, median of --iters runs) and
prints their largest relative difference.
"""

import argparse

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from bench import timing
from maskrcnn_jax.ops import grouped_conv


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--shape', type=int, nargs=4, default=(1, 100, 152, 256),
                 help='input N H W C (default: ResNeXt-101 32x4d layer2)')
  p.add_argument('--groups', type=int, default=32)
  p.add_argument('--iters', type=int, default=3)
  args = p.parse_args()
  n, h, w, c = args.shape
  g = args.groups
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((n, h, w, c)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 3, c // g, c)), jnp.float32)
  dy = jnp.asarray(rng.standard_normal((n, h, w, c)), jnp.float32)
  pad, prec = ((1, 1), (1, 1)), lax.Precision.HIGHEST

  def xla(x, k, dy):
    conv = lambda k: lax.conv_general_dilated(
        x, k, (1, 1), pad, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        feature_group_count=g, precision=prec)
    return jax.vjp(conv, k)[1](dy)[0]

  def sliced(x, k, dy):
    return grouped_conv.kernel_grad(x, k.shape, dy, (1, 1), pad, g, prec)

  results = {}
  for name, fn in (('xla', xla), ('sliced', sliced)):
    fn = jax.jit(fn)
    results[name] = fn(x, k, dy)
    print(f'{name:7s} {timing.median_seconds(fn, (x, k, dy), args.iters) * 1e3:10.1f} ms')
  ref = results['xla']
  diff = jnp.max(jnp.abs(results['sliced'] - ref)) / jnp.max(jnp.abs(ref))
  print(f'largest difference / largest value: {float(diff):.2e}')


if __name__ == '__main__':
  main()
