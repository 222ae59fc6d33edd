"""Grouped and 1x1 2-D convolutions whose kernel gradient XLA:CPU computes
fast.

Computes exactly `lax.conv_general_dilated(x, k, strides, padding,
dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=G)`, the
ResNeXt 3x3 convolution (PyTorch `Conv2d(groups=G)`, `weight` (O, I/G, kh,
kw) held here as HWIO (kh, kw, I/G, O); output channel o belongs to group
o // (O/G) and sees input channels [g * I/G, (g + 1) * I/G)).

The forward pass and the input gradient are XLA's own. The kernel gradient
is the reason for this module: XLA expresses it as a convolution with
`batch_group_count = G`, which jaxlib 0.10's CPU backend runs on a naive
path: 18.7 s for one ResNeXt-101 layer2 3x3 (100 x 152 x 256, G = 32;
0.56 GFLOP) on 2 cores, so that a full-resolution X-101 training step took
~8 minutes. Here it is a sum over the kh * kw window offsets of one batched
matmul each,

  dK[a, b, i, g, o] = sum_{n, y, x} xpad[n, y*s + a, x*s + b, g, i]
                                   * dY[n, y, x, g, o],

(strided slices of the zero-padded input, group as the batch dimension):
the same products, summed in another order (float32 round-off apart), in
0.10 s for that layer. A 1x1 convolution's kernel gradient is then a
single matmul, (N*H'*W', I)^T (N*H'*W', O), where XLA:CPU's own first
copies its operands into transposed layouts: forward and backward of one
1x1 conv 1.1-3x faster on 2 cores (R-50 and quick-start shapes, 2 to 4
images, measured in isolation), the quick start's step 0.82 -> 0.77 s.
Accelerators keep XLA's gradient (`STRATEGIES`: 'xla'); `resolve_strategy`
picks per compilation target.
"""

import functools
from typing import Sequence, Tuple

import jax
from jax import lax
import jax.numpy as jnp

from maskrcnn_jax import target as target_lib

STRATEGIES = ('xla', 'sliced')
_DIMS = ('NHWC', 'HWIO', 'NHWC')


def resolve_strategy(strategy: str = 'auto') -> str:
  """'xla' or 'sliced'; 'auto' is the compilation target's default."""
  strategy = target_lib.resolve('conv_kernel_grad', strategy)
  if strategy not in STRATEGIES:
    raise ValueError(f'grouped conv kernel gradient must be one of '
                     f"{STRATEGIES} or 'auto', got {strategy!r}")
  return strategy


def _conv(x, kernel, strides, padding, groups, precision):
  return lax.conv_general_dilated(
      x, kernel, strides, padding, dimension_numbers=_DIMS,
      feature_group_count=groups, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def grouped_conv(x, kernel, strides: Tuple[int, int],
                 padding: Tuple[Tuple[int, int], ...], groups: int,
                 precision=None):
  """x (N, H, W, I), kernel (kh, kw, I/G, O) -> (N, H', W', O); 'sliced'."""
  return _conv(x, kernel, strides, padding, groups, precision)


def _grouped_conv_fwd(x, kernel, strides, padding, groups, precision):
  return _conv(x, kernel, strides, padding, groups, precision), (x, kernel)


def kernel_grad(x, kernel_shape: Sequence[int], dy, strides, padding,
                groups: int, precision=None):
  """d(sum(dy * conv(x, K))) / dK, (kh, kw, I/G, O), by window offsets."""
  kh, kw, in_per_group, out = kernel_shape
  n, ho, wo, _ = dy.shape
  sy, sx = strides
  if (kh, kw, groups) == (1, 1, 1) and not any(map(any, padding)):
    window = x[:, :(ho - 1) * sy + 1:sy, :(wo - 1) * sx + 1:sx]
    dk = lax.dot_general(window.reshape(-1, in_per_group),
                         dy.reshape(-1, out), (((0,), (0,)), ((), ())),
                         precision=precision)
    return dk.reshape(kernel_shape)
  xpad = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  dy = dy.reshape(n, ho, wo, groups, out // groups)
  taps = []
  for a in range(kh):
    for b in range(kw):
      window = xpad[:, a:a + (ho - 1) * sy + 1:sy, b:b + (wo - 1) * sx + 1:sx]
      window = window.reshape(n, ho, wo, groups, in_per_group)
      # (I/G, G, O/G): contraction over (n, y, x), batched over groups.
      taps.append(jnp.einsum('nyxgi,nyxgo->igo', window, dy,
                             precision=precision))
  return jnp.stack(taps).reshape(kh, kw, in_per_group, out)


def _grouped_conv_bwd(strides, padding, groups, precision, residuals, dy):
  x, kernel = residuals
  _, input_vjp = jax.vjp(
      lambda v: _conv(v, kernel, strides, padding, groups, precision), x)
  (dx,) = input_vjp(dy)
  dk = kernel_grad(x, kernel.shape, dy, strides, padding, groups, precision)
  return dx, dk.astype(kernel.dtype)


grouped_conv.defvjp(_grouped_conv_fwd, _grouped_conv_bwd)


def conv_general_dilated_factory(strategy: str = 'auto'):
  """A `conv_general_dilated` for flax `nn.Conv(conv_general_dilated_cls=)`.

  With 'sliced' (the CPU default), grouped and 1x1 NHWC/HWIO convolutions
  without dilation take `grouped_conv` (a 1x1 kernel gradient is then one
  matmul, see above); everything else is lax's.
  """
  strategy = resolve_strategy(strategy)

  def conv_general_dilated(lhs, rhs, window_strides, padding,
                           lhs_dilation=None, rhs_dilation=None,
                           dimension_numbers=None, feature_group_count=1,
                           precision=None, **kwargs):
    plain = (lhs.ndim == 4 and not kwargs and not isinstance(padding, str)
             and all(d is None or tuple(d) == (1, 1)
                     for d in (lhs_dilation, rhs_dilation))
             and lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                            dimension_numbers) ==
             lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DIMS))
    pointwise = plain and tuple(rhs.shape[:2]) == (1, 1)
    if strategy == 'sliced' and plain and (feature_group_count > 1 or
                                           pointwise):
      return grouped_conv(lhs, rhs, tuple(window_strides),
                          tuple(tuple(p) for p in padding),
                          feature_group_count, precision)
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision,
        **kwargs)

  return conv_general_dilated
