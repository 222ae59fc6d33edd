"""Shared layers: frozen BatchNorm, MMDetection-named convs, padding masks.

Every image sits on a fixed padded canvas but MMDetection pads it only to
`pad_shape` (a multiple of 32). To reproduce MMDetection exactly, feature
cells past ceil(pad_shape / stride) are zeroed before every spatial op, so
they act like the zero padding of a smaller input.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

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
  def __call__(self, x):
    c = x.shape[-1]
    init = nn.initializers.zeros if self.zero_init else nn.initializers.ones
    scale = self.param('scale', init, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    mean = self.variable('batch_stats', 'mean', jnp.zeros, (c,), jnp.float32)
    var = self.variable('batch_stats', 'var', jnp.ones, (c,), jnp.float32)
    alpha = scale * jax.lax.rsqrt(var.value + self.eps)
    beta = bias - mean.value * alpha
    return x * alpha.astype(self.dtype) + beta.astype(self.dtype)


def conv(features: int, kernel: int, stride: int = 1, *, groups: int = 1,
         use_bias: bool = False, dtype: Dtype = jnp.float32,
         precision=None, name: Optional[str] = None,
         kernel_init=nn.initializers.kaiming_normal()) -> nn.Conv:
  """PyTorch-like Conv2d: symmetric padding kernel // 2, NHWC/HWIO."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=use_bias,
                 feature_group_count=groups, dtype=dtype,
                 param_dtype=jnp.float32, precision=precision,
                 kernel_init=kernel_init, name=name)


class ConvModule(nn.Module):
  """MMCV `ConvModule` without norm/activation: params under `conv/`."""
  features: int
  kernel: int
  dtype: Dtype = jnp.float32
  precision: Any = None
  kernel_init: Any = nn.initializers.xavier_uniform()

  @nn.compact
  def __call__(self, x):
    return conv(self.features, self.kernel, use_bias=True, dtype=self.dtype,
                precision=self.precision, kernel_init=self.kernel_init,
                name='conv')(x)


def max_pool_3x3_s2(x):
  """3x3/2 max-pool with 1-pixel -inf padding (PyTorch MaxPool2d(3, 2, 1))."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
