"""GroupNorm models (model.*.norm='GN'): layer, naming, conversion, training.

MMDetection's scratch / gn-all recipes use norm_cfg=dict(type='GN',
num_groups=32, requires_grad=True) in the backbone, the FPN and the mask
head; configs/quickstart.py trains such a model from scratch.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from maskrcnn_jax import config as config_lib
from maskrcnn_jax.convert import mmdet
from maskrcnn_jax.models import build
from maskrcnn_jax.models import layers
from maskrcnn_jax.train import optim


def _gn_config(**extra):
  c = config_lib.base_config()
  c.model.num_classes = 3
  c.model.norm_groups = 8
  c.model.backbone.base_channels = 16
  c.model.backbone.frozen_stages = -1
  c.model.backbone.norm = 'GN'
  c.model.neck.in_channels = (64, 128, 256, 512)
  c.model.neck.out_channels = 32
  c.model.neck.norm = 'GN'
  c.model.rpn.feat_channels = 32
  c.model.roi.fc_channels = 64
  c.model.roi.mask_channels = 32
  c.model.roi.num_mask_convs = 2
  c.model.roi.norm = 'GN'
  c.input.canvases = ((128, 160), (160, 128))
  for k, v in extra.items():
    config_lib.apply_overrides(c, [f'{k}={v!r}'])
  return c


def test_group_norm_matches_torch():
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, (2, 6, 5, 16)).astype(np.float32)
  scale = rng.normal(size=16).astype(np.float32)
  bias = rng.normal(size=16).astype(np.float32)
  gn = layers.GroupNorm(num_groups=4)
  y = gn.apply({'params': {'scale': scale, 'bias': bias}}, jnp.asarray(x))
  ref = torch.nn.GroupNorm(4, 16, eps=1e-5)
  with torch.no_grad():
    ref.weight.copy_(torch.from_numpy(scale))
    ref.bias.copy_(torch.from_numpy(bias))
    want = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(y), want.numpy(), rtol=1e-5,
                             atol=1e-5)


def test_group_norm_counts_only_the_padded_image():
  """On a larger canvas, statistics come from ceil(pad_hw / stride) cells:
  the result there equals GroupNorm of the cropped map."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 8, 10, 8)).astype(np.float32)
  pad_hw = jnp.array([[16, 24], [32, 40]], jnp.int32)  # stride 4: 4x6, 8x10
  gn = layers.GroupNorm(num_groups=2)
  params = gn.init(jax.random.PRNGKey(0), x)
  y = np.asarray(gn.apply(params, jnp.asarray(x), pad_hw, 4))
  for b, (h, w) in enumerate([(4, 6), (8, 10)]):
    crop = gn.apply(params, jnp.asarray(x[b:b + 1, :h, :w]))
    np.testing.assert_allclose(y[b, :h, :w], np.asarray(crop)[0], rtol=1e-5,
                               atol=1e-5)
  with pytest.raises(ValueError, match='6 channels do not split into 4'):
    layers.GroupNorm(num_groups=4).init(jax.random.PRNGKey(0),
                                        jnp.zeros((1, 2, 2, 6)))


def test_gn_model_names_convert_and_train():
  c = _gn_config()
  variables = build.init_variables(c, jax.random.PRNGKey(0))
  assert variables['batch_stats'] == {}  # no BatchNorm anywhere
  sd = mmdet.variables_to_state_dict(variables, c)
  # MMDetection's names: build_norm_layer calls GN layers gn1/gn2/gn3 in the
  # ResNet, `gn` inside ConvModule; ConvModule convs lose their bias.
  for key in ('backbone.gn1.weight', 'backbone.layer1.0.gn3.bias',
              'backbone.layer2.0.downsample.1.weight',
              'neck.lateral_convs.0.gn.weight', 'neck.fpn_convs.3.gn.bias',
              'roi_head.mask_head.convs.1.gn.weight'):
    assert key in sd, key
  assert 'neck.lateral_convs.0.conv.bias' not in sd
  assert 'roi_head.mask_head.convs.0.conv.bias' not in sd
  assert not any('bn' in k or 'running' in k for k in sd)
  back = mmdet.state_dict_to_variables(
      sd, c, expected=build.abstract_variables(c))
  for (pa, a), (pb, b) in zip(
      jax.tree_util.tree_leaves_with_path(variables['params']),
      jax.tree_util.tree_leaves_with_path(back['params'])):
    assert pa == pb
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Every GroupNorm is trainable from scratch (frozen_stages=-1); with
  # frozen_stages=1 the stem's gn1 and layer1 freeze as bn1 would.
  mask = optim.trainable_mask(variables['params'], c)
  assert all(jax.tree_util.tree_leaves(mask))
  c1 = _gn_config(**{'model.backbone.frozen_stages': 1})
  mask = optim.trainable_mask(variables['params'], c1)
  assert not mask['backbone']['gn1']['scale']
  assert not mask['backbone']['layer1']['0']['gn2']['bias']
  assert mask['backbone']['layer2']['0']['gn2']['bias']
  assert mask['neck']['fpn_convs']['0']['gn']['scale']


def test_gn_features_do_not_depend_on_the_canvas():
  """An image on a larger canvas gives the same features (GN statistics
  exclude the canvas beyond pad_hw)."""
  c = _gn_config()
  model = build.build_model(c)
  variables = build.init_variables(c, jax.random.PRNGKey(0))
  img = np.random.default_rng(2).integers(0, 255, (96, 128, 3), np.uint8)
  big = np.zeros((1, 160, 192, 3), np.uint8)
  big[0, :96, :128] = img
  hw = jnp.array([[96, 128]], jnp.int32)
  small = model.apply(variables, img[None], hw, hw, method='features')
  large = model.apply(variables, big, hw, hw, method='features')
  for s, l, stride in zip(small, large, (4, 8, 16, 32, 64)):
    h, w = 96 // stride + (96 % stride > 0), -(-128 // stride)
    np.testing.assert_allclose(np.asarray(l)[:, :h, :w], np.asarray(s),
                               rtol=1e-4, atol=1e-4)


def test_bad_norm_is_named():
  c = _gn_config(**{'model.neck.norm': 'BN'})
  with pytest.raises(ValueError, match='model.neck.norm'):
    build.init_variables(c, jax.random.PRNGKey(0))
