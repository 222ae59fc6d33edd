"""RPN head, Shared2FC box head and FCN mask head (MMDetection names)."""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskrcnn_jax.models import layers
from maskrcnn_jax.ops import grouped_conv

_normal = nn.initializers.normal


class RPNHead(nn.Module):
  """Shared 3x3 conv + ReLU, then objectness (A) and deltas (4A) per level.

  Returns per level (B, H*W*A) logits and (B, H*W*A, 4) deltas, in the
  anchor order ((y * W + x) * A + a).
  """
  num_anchors: int = 3
  feat_channels: int = 256
  strides: Sequence[int] = (4, 8, 16, 32, 64)
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, feats, pad_hw=None):
    kw = dict(dtype=self.dtype, precision=self.precision,
              kernel_init=_normal(0.01))
    rpn_conv = layers.conv(self.feat_channels, 3, use_bias=True,
                           name='rpn_conv', **kw)
    rpn_cls = layers.conv(self.num_anchors, 1, use_bias=True, name='rpn_cls',
                          **kw)
    rpn_reg = layers.conv(4 * self.num_anchors, 1, use_bias=True,
                          name='rpn_reg', **kw)
    logits, deltas = [], []
    for x, stride in zip(feats, self.strides):
      x = nn.relu(rpn_conv(layers.mask_padding(x, pad_hw, stride)))
      b = x.shape[0]
      logits.append(rpn_cls(x).reshape(b, -1).astype(jnp.float32))
      deltas.append(rpn_reg(x).reshape(b, -1, 4).astype(jnp.float32))
    return logits, deltas


class Shared2FCBBoxHead(nn.Module):
  """Flatten (NHWC) -> fc -> ReLU -> fc -> ReLU -> cls (K+1) / reg (4K).

  Class index `num_classes` is background (last), as in MMDetection.
  """
  num_classes: int = 80
  fc_channels: int = 1024
  num_shared_fcs: int = 2
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, roi_feats):
    """roi_feats: (N, 7, 7, C) -> (N, K+1) logits, (N, 4K) deltas."""
    x = roi_feats.reshape(roi_feats.shape[0], -1).astype(self.dtype)
    kw = dict(dtype=self.dtype, param_dtype=jnp.float32,
              precision=self.precision)
    x = SharedFCs(self.fc_channels, self.num_shared_fcs, kw,
                  name='shared_fcs')(x)
    cls = nn.Dense(self.num_classes + 1, kernel_init=_normal(0.01),
                   name='fc_cls', **kw)(x)
    reg = nn.Dense(4 * self.num_classes, kernel_init=_normal(0.001),
                   name='fc_reg', **kw)(x)
    return cls.astype(jnp.float32), reg.astype(jnp.float32)


class SharedFCs(nn.Module):
  """`shared_fcs` ModuleList: Dense layers named '0', '1', ... with ReLU."""
  features: int
  num: int
  dense_kwargs: Any

  @nn.compact
  def __call__(self, x):
    for i in range(self.num):
      x = nn.relu(nn.Dense(self.features, name=str(i),
                           kernel_init=nn.initializers.xavier_uniform(),
                           **self.dense_kwargs)(x))
    return x


class MaskConvs(nn.Module):
  """`convs` ModuleList: 3x3 ConvModules named '0', '1', ... with ReLU."""
  features: int
  num: int
  dtype: Any
  precision: Any
  norm: str = 'none'
  num_groups: int = 32

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
    for i in range(self.num):
      x = nn.relu(layers.ConvModule(self.features, 3, self.dtype,
                                    self.precision, kernel_init=init,
                                    norm=self.norm,
                                    num_groups=self.num_groups,
                                    name=str(i))(x))
    return x


class ConvTranspose2x2(nn.Module):
  """PyTorch ConvTranspose2d(k=2, s=2, p=0) as a 1x1 conv + depth-to-space.

  The kernel is (C_in, 2, 2, C_out) (PyTorch [in, out, kh, kw] transposed),
  y[n, 2i+a, 2j+b, o] = bias[o] + sum_c x[n, i, j, c] * kernel[c, a, b, o]:
  a 1x1 convolution to (a, b, o) channels (on CPUs with ops/grouped_conv.py's
  one-matmul kernel gradient), then `depth_to_space`. With `blocked`, the
  result stays (N, H, W, 2, 2, C_out), so that pointwise ops after it (the
  mask head's ReLU and 1x1 conv_logits) run before the interleaving copy,
  on fewer channels.
  """
  features: int
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, blocked: bool = False):
    n, h, w, c = x.shape
    init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal',
                                            in_axis=(0, 1, 2), out_axis=3)
    kernel = self.param('kernel', init, (c, 2, 2, self.features),
                        jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,),
                      jnp.float32)
    conv = grouped_conv.conv_general_dilated_factory()
    y = conv(x.astype(self.dtype),
             kernel.reshape(1, 1, c, 4 * self.features).astype(self.dtype),
             (1, 1), ((0, 0), (0, 0)),
             dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
             precision=self.precision)
    y = layers.add_bias(y.reshape(n, h, w, 2, 2, self.features),
                        bias.astype(self.dtype))
    return y if blocked else depth_to_space(y)


def depth_to_space(y):
  """(N, H, W, 2, 2, C) [n, i, j, a, b] -> (N, 2H, 2W, C) [n, 2i+a, 2j+b]."""
  n, h, w, _, _, c = y.shape
  return y.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, c)


class FCNMaskHead(nn.Module):
  """4 x (3x3 conv + ReLU) -> 2x deconv + ReLU -> 1x1 conv to K classes.

  norm 'GN': each of the convs is conv + GroupNorm (per RoI), as
  FCNMaskHead(norm_cfg=dict(type='GN', ...)).
  """
  num_classes: int = 80
  num_convs: int = 4
  channels: int = 256
  dtype: Any = jnp.float32
  precision: Any = None
  norm: str = 'none'
  num_groups: int = 32

  @nn.compact
  def __call__(self, roi_feats):
    """roi_feats: (N, 14, 14, C) -> (N, 28, 28, K) float32 logits."""
    layers.check_norm(self.norm, 'model.roi.norm', ('GN', 'none'))
    x = roi_feats.astype(self.dtype)
    x = MaskConvs(self.channels, self.num_convs, self.dtype, self.precision,
                  self.norm, self.num_groups, name='convs')(x)
    # The deconv's output stays blocked (N, 14, 14, 2, 2, C) through the
    # pointwise ReLU and 1x1 conv_logits (as (N, 14, 56, C)); only the K
    # logit channels are interleaved to 28 x 28.
    x = nn.relu(ConvTranspose2x2(self.channels, self.dtype, self.precision,
                                 name='upsample')(x, blocked=True))
    n, h, w = x.shape[:3]
    init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
    x = x.reshape(n, h, w * 4, self.channels)
    x = layers.conv(self.num_classes, 1, use_bias=True, dtype=self.dtype,
                    precision=self.precision, kernel_init=init,
                    name='conv_logits')(x)
    x = depth_to_space(x.reshape(n, h, w, 2, 2, self.num_classes))
    return x.astype(jnp.float32)


class RoIHead(nn.Module):
  """Container named like MMDetection's `roi_head` (bbox_head, mask_head)."""
  num_classes: int = 80
  fc_channels: int = 1024
  num_shared_fcs: int = 2
  num_mask_convs: int = 4
  mask_channels: int = 256
  dtype: Any = jnp.float32
  precision: Any = None
  mask_norm: str = 'none'
  num_groups: int = 32

  def setup(self):
    self.bbox_head = Shared2FCBBoxHead(self.num_classes, self.fc_channels,
                                       self.num_shared_fcs, self.dtype,
                                       self.precision)
    self.mask_head = FCNMaskHead(self.num_classes, self.num_mask_convs,
                                 self.mask_channels, self.dtype,
                                 self.precision, self.mask_norm,
                                 self.num_groups)

  def __call__(self, box_feats, mask_feats):
    return self.bbox_head(box_feats), self.mask_head(mask_feats)
