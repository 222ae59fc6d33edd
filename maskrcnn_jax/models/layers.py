"""Shared layers: frozen BatchNorm, GroupNorm, MMDetection-named convs and
padding masks.

Every image sits on a fixed padded canvas but MMDetection pads it only to
`pad_shape` (a multiple of 32). To reproduce MMDetection exactly, feature
cells past ceil(pad_shape / stride) are zeroed before every spatial op, so
they act like the zero padding of a smaller input.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskrcnn_jax.ops import group_norm as group_norm_op
from maskrcnn_jax.ops import grouped_conv

Dtype = Any


def valid_mask(pad_hw, shape_hw: Sequence[int], stride: int):
  """(B, H, W, 1) bool: cell lies inside ceil(pad_hw / stride).

  Args:
    pad_hw: (B, 2) int32 per-image padded size (multiple of 32).
    shape_hw: static (H, W) of the feature map on the canvas.
    stride: the feature map's stride.
  """
  valid = -(-pad_hw // stride)  # ceil division
  ys = jnp.arange(shape_hw[0])[None, :, None]
  xs = jnp.arange(shape_hw[1])[None, None, :]
  mask = (ys < valid[:, 0, None, None]) & (xs < valid[:, 1, None, None])
  return mask[..., None]


def mask_padding(x, pad_hw, stride: int):
  """Zeroes cells of x (B, H, W, C) outside the image's padded extent."""
  if pad_hw is None:
    return x
  return jnp.where(valid_mask(pad_hw, x.shape[1:3], stride), x,
                   jnp.zeros((), x.dtype))


@jax.custom_vjp
def add_bias(x, bias):
  """x (..., C) + bias (C,), with the bias gradient as one matrix-vector
  product: autodiff's reduction over every leading axis becomes a slow
  reduce-window on XLA:CPU (20 ms of the quick start's step for the mask
  head's deconv bias)."""
  return x + bias


def _add_bias_fwd(x, bias):
  return x + bias, None


def _add_bias_bwd(_, g):
  rows = g.reshape(-1, g.shape[-1])
  ones = jnp.ones((rows.shape[0],), g.dtype)
  g_bias = jax.lax.dot_general(ones, rows, (((0,), (0,)), ((), ())),
                               precision=jax.lax.Precision.HIGHEST)
  return g, g_bias


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


class FrozenBatchNorm(nn.Module):
  """BatchNorm in inference mode (MMDetection `norm_eval=True`).

  `scale`/`bias` live in 'params' (trainable unless frozen by the
  optimizer); `mean`/`var` in 'batch_stats' and never change.
  y = x * (scale / sqrt(var + eps)) + (bias - mean * scale / sqrt(var + eps)),
  the form PyTorch's CPU kernel evaluates.
  """
  eps: float = 1e-5
  dtype: Dtype = jnp.float32
  zero_init: bool = False  # scale starts at 0 (zero_init_residual)

  @nn.compact
  def __call__(self, x, pad_hw=None, stride: int = 1):
    """x: (B, H, W, C); pad_hw/stride unused (a per-channel affine)."""
    del pad_hw, stride
    c = x.shape[-1]
    init = nn.initializers.zeros if self.zero_init else nn.initializers.ones
    scale = self.param('scale', init, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    mean = self.variable('batch_stats', 'mean', jnp.zeros, (c,), jnp.float32)
    var = self.variable('batch_stats', 'var', jnp.ones, (c,), jnp.float32)
    alpha = scale * jax.lax.rsqrt(var.value + self.eps)
    beta = bias - mean.value * alpha
    return x * alpha.astype(self.dtype) + beta.astype(self.dtype)


class GroupNorm(nn.Module):
  """PyTorch `nn.GroupNorm(num_groups, C, eps)` (MMDetection norm_cfg GN).

  Statistics are per image and group over (H, W, C / G), computed in
  float32. With `pad_hw`, only cells inside ceil(pad_hw / stride) count, so
  an image on a larger fixed canvas is normalised as MMDetection normalises
  it padded to `pad_shape`; cells outside are left to the next op's
  `mask_padding`. `scale`/`bias` are trainable params (requires_grad=True);
  there are no batch_stats.
  """
  num_groups: int = 32
  eps: float = 1e-5
  dtype: Dtype = jnp.float32
  zero_init: bool = False  # scale starts at 0 (zero_init_residual)

  @nn.compact
  def __call__(self, x, pad_hw=None, stride: int = 1):
    """x: (B, H, W, C) or (N, C) -> same shape; pad_hw (B, 2) or None."""
    c = x.shape[-1]
    g = self.num_groups
    if c % g:
      raise ValueError(f'GroupNorm: {c} channels do not split into '
                       f'{g} groups (model.norm_groups)')
    init = nn.initializers.zeros if self.zero_init else nn.initializers.ones
    scale = self.param('scale', init, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    xf = x.astype(jnp.float32)
    if x.ndim != 4:
      xg = xf.reshape(x.shape[:-1] + (g, c // g))
      mean = jnp.mean(xg, axis=-1, keepdims=True)
      var = jnp.mean(jnp.square(xg - mean), axis=-1, keepdims=True)
      y = ((xg - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
      return (y * scale + bias).astype(self.dtype)
    # ops/group_norm.py: the same two-pass statistics, reduced with matrix
    # products, and a closed-form backward.
    m = None
    if pad_hw is not None:
      m = valid_mask(pad_hw, x.shape[1:3], stride).astype(jnp.float32)
    y = group_norm_op.group_norm(xf, scale, bias, m, groups=g, eps=self.eps)
    return y.astype(self.dtype)


NORMS = ('BN', 'GN', 'none')


def check_norm(kind: str, key: str, allowed=NORMS) -> str:
  if kind not in allowed:
    raise ValueError(f'{key} must be one of {list(allowed)}, got {kind!r}')
  return kind


def norm_layer(kind: str, *, name: str, num_groups: int = 32,
               eps: float = 1e-5, dtype: Dtype = jnp.float32,
               zero_init: bool = False) -> nn.Module:
  """'BN' (frozen BatchNorm, norm_eval=True) or 'GN' (trainable GroupNorm).

  Both are called as layer(x, pad_hw=None, stride=1).
  """
  if kind == 'BN':
    return FrozenBatchNorm(eps, dtype, zero_init=zero_init, name=name)
  if kind == 'GN':
    return GroupNorm(num_groups, eps, dtype, zero_init=zero_init, name=name)
  raise ValueError(f"norm must be 'BN' or 'GN', got {kind!r}")


def norm_name(kind: str, bn_name: str) -> str:
  """MMDetection's module name: build_norm_layer names GN layers 'gn*'."""
  return 'gn' + bn_name[2:] if kind == 'GN' and bn_name.startswith(
      'bn') else bn_name


def conv(features: int, kernel: int, stride: int = 1, *, groups: int = 1,
         use_bias: bool = False, dtype: Dtype = jnp.float32,
         precision=None, name: Optional[str] = None,
         kernel_init=nn.initializers.kaiming_normal()) -> nn.Conv:
  """PyTorch-like Conv2d: symmetric padding kernel // 2, NHWC/HWIO.

  Grouped (ResNeXt) and 1x1 convolutions take ops/grouped_conv.py, whose
  kernel gradient XLA:CPU computes faster than its own (same values; ~100x
  for grouped ones).
  """
  pad = kernel // 2
  sliced = groups > 1 or kernel == 1
  factory = grouped_conv.conv_general_dilated_factory if sliced else None
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=use_bias,
                 feature_group_count=groups, dtype=dtype,
                 param_dtype=jnp.float32, precision=precision,
                 kernel_init=kernel_init, conv_general_dilated_cls=factory,
                 name=name)


class ConvModule(nn.Module):
  """MMCV `ConvModule` without activation: params under `conv/`.

  norm 'none': conv with bias. norm 'GN': conv without bias (bias='auto')
  then GroupNorm under `gn/`, as ConvModule(norm_cfg=dict(type='GN')).
  """
  features: int
  kernel: int
  dtype: Dtype = jnp.float32
  precision: Any = None
  kernel_init: Any = nn.initializers.xavier_uniform()
  norm: str = 'none'
  num_groups: int = 32

  @nn.compact
  def __call__(self, x, pad_hw=None, stride: int = 1):
    """x: (B, H, W, C); pad_hw/stride: the map's valid extent (GN only)."""
    with_norm = check_norm(self.norm, 'ConvModule norm', ('GN', 'none'))
    x = conv(self.features, self.kernel, use_bias=with_norm == 'none',
             dtype=self.dtype, precision=self.precision,
             kernel_init=self.kernel_init, name='conv')(x)
    if with_norm == 'GN':
      x = GroupNorm(self.num_groups, dtype=self.dtype, name='gn')(
          x, pad_hw, stride)
    return x


@jax.custom_vjp
def max_pool_3x3_s2(x):
  """3x3/2 max-pool with 1-pixel -inf padding (PyTorch MaxPool2d(3, 2, 1)).

  x (B, H, W, C) -> (B, ceil(H / 2), ceil(W / 2), C). The gradient goes to
  the first maximum of each window in row-major order, as PyTorch's and
  XLA's (select_and_scatter with >=); computed from the nine strided taps
  of the window (XLA:CPU's select_and_scatter builds an index iota and a
  variadic reduce-window, ~20 ms of the quick start's step).
  """
  return _max_pool(x)


def _max_pool(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def _pool_taps(x, out_hw):
  """The 9 (B, Ho, Wo, C) strided views of the -inf padded x, row-major."""
  ho, wo = out_hw
  xpad = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)),
                 constant_values=-jnp.inf)
  return [xpad[:, a:a + 2 * ho - 1:2, b:b + 2 * wo - 1:2]
          for a in range(3) for b in range(3)]


def _max_pool_fwd(x):
  out = _max_pool(x)
  return out, (x, out)


def _max_pool_bwd(residuals, g):
  x, out = residuals
  h, w = x.shape[1:3]
  ho, wo = out.shape[1:3]
  taken = jnp.zeros(out.shape, bool)
  zero = jnp.zeros((), g.dtype)
  dx = None
  for k, tap in enumerate(_pool_taps(x, (ho, wo))):
    a, col = divmod(k, 3)
    first = (tap == out) & ~taken
    taken = taken | first
    # Back to padded-map positions (a + 2i, col + 2j): interior padding.
    part = jax.lax.pad(jnp.where(first, g, zero), zero, (
        (0, 0, 0), (a, h + 2 - a - (2 * ho - 1), 1),
        (col, w + 2 - col - (2 * wo - 1), 1), (0, 0, 0)))
    dx = part if dx is None else dx + part
  return (dx[:, 1:h + 1, 1:w + 1],)


max_pool_3x3_s2.defvjp(_max_pool_fwd, _max_pool_bwd)
