"""ResNet / ResNeXt backbones in MMDetection's pytorch and caffe styles.

mmdet.models.backbones.ResNet: depths 18 and 34 stack `BasicBlock`s (two 3x3
convs, expansion 1), 50/101/152 `Bottleneck`s (1x1, 3x3, 1x1, expansion 4).
Parameter paths mirror MMDetection: `conv1`, `bn1`, `layer{s}/{b}/conv{k}`,
`layer{s}/{b}/bn{k}`, `layer{s}/0/downsample/{0,1}`.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from maskrcnn_jax.models import layers

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3),
                101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
BASIC_BLOCK_DEPTHS = (18, 34)  # MMDetection's ResNet.arch_settings


def expansion(depth: int) -> int:
  """Output channels per plane of a stage's blocks (BasicBlock 1, else 4)."""
  return 1 if depth in BASIC_BLOCK_DEPTHS else 4


def _block_norm(block, name: str, zero: bool = False):
  """The block's norm layer `name` ('bn2' -> 'gn2' for GroupNorm)."""
  return layers.norm_layer(block.norm, num_groups=block.num_groups,
                           eps=block.norm_eps, dtype=block.dtype,
                           zero_init=zero,
                           name=layers.norm_name(block.norm, name))


class Downsample(nn.Module):
  """1x1 strided conv + BN shortcut, named `0` and `1` as nn.Sequential."""
  features: int
  stride: int
  norm_eps: float
  dtype: Any
  precision: Any
  norm: str = 'BN'
  num_groups: int = 32

  @nn.compact
  def __call__(self, x, pad_hw=None, out_stride: int = 1):
    x = layers.conv(self.features, 1, self.stride, dtype=self.dtype,
                    precision=self.precision, name='0')(x)
    return layers.norm_layer(self.norm, num_groups=self.num_groups,
                             eps=self.norm_eps, dtype=self.dtype,
                             name='1')(x, pad_hw, out_stride)


class Bottleneck(nn.Module):
  """Bottleneck block; `style` decides which conv carries the stride.

  Attributes:
    planes: base width of the block; output has 4 * planes channels.
    stride: 1 or 2.
    groups, base_width: ResNeXt cardinality and group width.
    style: 'pytorch' (stride on the 3x3) or 'caffe' (on the first 1x1).
    in_stride: stride of the block input w.r.t. the image (for masking).
    norm: 'BN' (frozen, layers `bn{k}`) or 'GN' (GroupNorm of num_groups,
      layers `gn{k}` as MMDetection names them).
  """
  planes: int
  stride: int
  groups: int
  base_width: int
  style: str
  downsample: bool
  in_stride: int
  norm_eps: float = 1e-5
  dtype: Any = jnp.float32
  precision: Any = None
  norm: str = 'BN'
  num_groups: int = 32

  @nn.compact
  def __call__(self, x, pad_hw):
    if self.groups == 1:
      width = self.planes
    else:
      width = (self.planes * self.base_width // 64) * self.groups
    s1, s2 = (1, self.stride) if self.style == 'pytorch' else (self.stride, 1)
    kw = dict(dtype=self.dtype, precision=self.precision)
    bn = functools.partial(_block_norm, self)
    out_stride = self.in_stride * self.stride
    out = layers.conv(width, 1, s1, name='conv1', **kw)(x)
    out = nn.relu(bn('bn1')(out, pad_hw, self.in_stride * s1))
    out = layers.mask_padding(out, pad_hw, self.in_stride * s1)
    out = layers.conv(width, 3, s2, groups=self.groups, name='conv2',
                      **kw)(out)
    out = nn.relu(bn('bn2')(out, pad_hw, out_stride))
    out = layers.conv(4 * self.planes, 1, name='conv3', **kw)(out)
    # MMDetection's ResNet(zero_init_residual=True): each residual branch
    # starts as zero, so a randomly initialised network is well behaved.
    out = bn('bn3', True)(out, pad_hw, out_stride)
    if self.downsample:
      x = Downsample(4 * self.planes, self.stride, self.norm_eps, self.dtype,
                     self.precision, self.norm, self.num_groups,
                     name='downsample')(x, pad_hw, out_stride)
    return nn.relu(out + x)


class BasicBlock(nn.Module):
  """mmdet BasicBlock: 3x3 conv (carrying the stride), 3x3 conv, shortcut.

  Attributes as Bottleneck's; the output has `planes` channels. Both
  styles put the stride on conv1 (MMDetection's BasicBlock ignores style).
  """
  planes: int
  stride: int
  downsample: bool
  in_stride: int
  norm_eps: float = 1e-5
  dtype: Any = jnp.float32
  precision: Any = None
  norm: str = 'BN'
  num_groups: int = 32

  @nn.compact
  def __call__(self, x, pad_hw):
    kw = dict(dtype=self.dtype, precision=self.precision)
    bn = functools.partial(_block_norm, self)
    out_stride = self.in_stride * self.stride
    out = layers.conv(self.planes, 3, self.stride, name='conv1', **kw)(x)
    out = nn.relu(bn('bn1')(out, pad_hw, out_stride))
    out = layers.mask_padding(out, pad_hw, out_stride)
    out = layers.conv(self.planes, 3, name='conv2', **kw)(out)
    # zero_init_residual: MMDetection zeroes a BasicBlock's norm2.
    out = bn('bn2', True)(out, pad_hw, out_stride)
    if self.downsample:
      x = Downsample(self.planes, self.stride, self.norm_eps, self.dtype,
                     self.precision, self.norm, self.num_groups,
                     name='downsample')(x, pad_hw, out_stride)
    return nn.relu(out + x)


class ResLayer(nn.Module):
  """One stage `layer{s}`: blocks named '0', '1', ...

  As mmdet's ResLayer, only the first block has a `downsample` shortcut,
  and only where the stride or the channel count changes.
  """
  num_blocks: int
  planes: int
  stride: int
  in_stride: int
  block_kwargs: Any
  basic: bool = False  # BasicBlocks (depth 18/34) instead of Bottlenecks

  @nn.compact
  def __call__(self, x, pad_hw):
    block, kwargs = Bottleneck, self.block_kwargs
    out_channels = 4 * self.planes
    if self.basic:
      block, out_channels = BasicBlock, self.planes
      kwargs = {k: v for k, v in kwargs.items()
                if k not in ('groups', 'base_width', 'style')}
    for b in range(self.num_blocks):
      first = b == 0
      x = block(
          planes=self.planes, stride=self.stride if first else 1,
          downsample=first and (self.stride != 1 or
                                x.shape[-1] != out_channels),
          in_stride=self.in_stride if first else self.in_stride * self.stride,
          name=str(b), **kwargs)(x, pad_hw)
    return x


class ResNet(nn.Module):
  """ResNet/ResNeXt returning C2..C5 (strides 4, 8, 16, 32), NHWC.

  Attributes:
    depth: 18 or 34 (BasicBlock), 50, 101 or 152 (Bottleneck).
    base_channels: stem width and planes of layer1 (64 in every zoo row;
      smaller values give the light quick-start model).
    groups, base_width: ResNeXt settings (groups=1 -> ResNet; ResNeXt has
      no BasicBlock depths, as in MMDetection).
    style: 'pytorch' or 'caffe'.
    norm: 'BN' (frozen BatchNorm, every zoo row) or 'GN' (trainable
      GroupNorm of `num_groups`, MMDetection's gn-all / scratch recipes).
  """
  depth: int = 50
  groups: int = 1
  base_width: int = 4
  style: str = 'pytorch'
  norm_eps: float = 1e-5
  base_channels: int = 64
  dtype: Any = jnp.float32
  precision: Any = None
  norm: str = 'BN'
  num_groups: int = 32

  @nn.compact
  def __call__(self, x, pad_hw=None):
    """x: (B, H, W, 3) normalised image; pad_hw: (B, 2) or None."""
    if self.style not in ('pytorch', 'caffe'):
      raise ValueError(f"backbone style must be 'pytorch' or 'caffe', "
                       f'got {self.style!r}')
    if self.depth not in STAGE_BLOCKS:
      raise ValueError(f'ResNet depth must be one of {sorted(STAGE_BLOCKS)},'
                       f' got {self.depth}')
    basic = self.depth in BASIC_BLOCK_DEPTHS
    if basic and self.groups != 1:
      raise ValueError(f'ResNeXt (groups={self.groups}) has no depth '
                       f'{self.depth}: BasicBlock depths 18/34 need groups=1')
    x = x.astype(self.dtype)
    x = layers.conv(self.base_channels, 7, 2, dtype=self.dtype,
                    precision=self.precision, name='conv1')(x)
    layers.check_norm(self.norm, 'model.backbone.norm', ('BN', 'GN'))
    x = layers.norm_layer(self.norm, num_groups=self.num_groups,
                          eps=self.norm_eps, dtype=self.dtype,
                          name=layers.norm_name(self.norm, 'bn1'))(
                              x, pad_hw, 2)
    x = nn.relu(x)
    # Post-ReLU values are >= 0, so zeroed padding equals -inf padding.
    x = layers.mask_padding(x, pad_hw, 2)
    x = layers.max_pool_3x3_s2(x)
    block_kwargs = dict(groups=self.groups, base_width=self.base_width,
                        style=self.style, norm_eps=self.norm_eps,
                        dtype=self.dtype, precision=self.precision,
                        norm=self.norm, num_groups=self.num_groups)
    outs = []
    in_stride = 4
    for s, num_blocks in enumerate(STAGE_BLOCKS[self.depth]):
      stride = 1 if s == 0 else 2
      x = ResLayer(num_blocks, self.base_channels * 2 ** s, stride,
                   in_stride, block_kwargs, basic,
                   name=f'layer{s + 1}')(x, pad_hw)
      in_stride *= stride
      outs.append(x)
    return outs
