"""MMDetection `FPN` (add_extra_convs=False, P6 by stride-2 subsampling)."""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from maskrcnn_jax.models import layers


class ConvList(nn.Module):
  """`nn.ModuleList` of ConvModules named '0', '1', ..., one per input."""
  features: int
  kernel: int
  in_strides: Sequence[int]
  dtype: Any = jnp.float32
  precision: Any = None
  norm: str = 'none'
  num_groups: int = 32

  @nn.compact
  def __call__(self, xs, pad_hw):
    outs = []
    for i, (x, stride) in enumerate(zip(xs, self.in_strides)):
      if self.kernel > 1:
        x = layers.mask_padding(x, pad_hw, stride)
      outs.append(layers.ConvModule(
          self.features, self.kernel, self.dtype, self.precision,
          norm=self.norm, num_groups=self.num_groups, name=str(i))(
              x, pad_hw, stride))
    return outs


class FPN(nn.Module):
  """C2..C5 -> P2..P6 (strides 4..64), `out_channels` each, NHWC.

  norm 'GN': every lateral and output ConvModule is conv + GroupNorm
  (MMDetection FPN(norm_cfg=dict(type='GN', num_groups=...))).
  """
  out_channels: int = 256
  num_outs: int = 5
  in_strides: Sequence[int] = (4, 8, 16, 32)
  dtype: Any = jnp.float32
  precision: Any = None
  norm: str = 'none'
  num_groups: int = 32

  @nn.compact
  def __call__(self, feats, pad_hw=None):
    layers.check_norm(self.norm, 'model.neck.norm', ('GN', 'none'))
    kw = dict(dtype=self.dtype, precision=self.precision, norm=self.norm,
              num_groups=self.num_groups)
    laterals = ConvList(self.out_channels, 1, self.in_strides,
                        name='lateral_convs', **kw)(feats, pad_hw)
    for i in range(len(laterals) - 1, 0, -1):
      up = laterals[i]
      target = laterals[i - 1].shape[1:3]
      if (up.shape[1] * 2, up.shape[2] * 2) != tuple(target):
        raise ValueError(f'FPN needs maps that halve exactly; got '
                         f'{laterals[i - 1].shape} and {up.shape}. Canvas '
                         'sizes must be multiples of 32.')
      up = jnp.repeat(jnp.repeat(up, 2, axis=1), 2, axis=2)
      laterals[i - 1] = laterals[i - 1] + up
    outs = ConvList(self.out_channels, 3, self.in_strides, name='fpn_convs',
                    **kw)(laterals, pad_hw)
    while len(outs) < self.num_outs:
      # F.max_pool2d(x, 1, stride=2) == x[::2, ::2].
      outs.append(outs[-1][:, ::2, ::2])
    return outs
