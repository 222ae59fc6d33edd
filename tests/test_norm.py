"""GroupNorm models (model.*.norm='GN'): layer, naming, conversion, training.

MMDetection's scratch / gn-all recipes use norm_cfg=dict(type='GN',
num_groups=32, requires_grad=True) in the backbone, the FPN and the mask
head. References: torch.nn.GroupNorm (forward and autograd), the fixture
r50_fpn checkpoint's own MMDetection key list renamed as mmcv names GN
layers, and the model run on the exact padded input MMDetection sees.

Kept small for 2 CPU cores: layer tests on tiny maps, the key check on
shapes only (jax.eval_shape, no model run), and one small model compiled
for two canvas shapes.
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
from maskrcnn_jax.testing import fixtures
from maskrcnn_jax.train import optim

_GN_ALL = ['model.backbone.norm="GN"', 'model.neck.norm="GN"',
           'model.roi.norm="GN"']


def _torch_gn(x_nhwc, scale, bias, groups):
  """torch.nn.GroupNorm(groups, C, eps=1e-5) of an NHWC array (NHWC out)."""
  ref = torch.nn.GroupNorm(groups, x_nhwc.shape[-1], eps=1e-5)
  with torch.no_grad():
    ref.weight.copy_(torch.from_numpy(scale))
    ref.bias.copy_(torch.from_numpy(bias))
  x = torch.from_numpy(np.ascontiguousarray(x_nhwc)).permute(0, 3, 1, 2)
  x.requires_grad_(True)
  return ref, x, ref(x).permute(0, 2, 3, 1)


def test_group_norm_matches_torch_forward_and_gradients():
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, (2, 6, 5, 16)).astype(np.float32)
  scale = rng.normal(size=16).astype(np.float32)
  bias = rng.normal(size=16).astype(np.float32)
  cot = rng.normal(size=x.shape).astype(np.float32)
  gn = layers.GroupNorm(num_groups=4)

  def f(params, x):
    return gn.apply({'params': params}, x)

  params = {'scale': jnp.asarray(scale), 'bias': jnp.asarray(bias)}
  y, vjp = jax.vjp(f, params, jnp.asarray(x))
  g_params, g_x = vjp(jnp.asarray(cot))
  ref, xt, want = _torch_gn(x, scale, bias, 4)
  (want * torch.from_numpy(cot)).sum().backward()
  np.testing.assert_allclose(np.asarray(y), want.detach().numpy(), rtol=1e-5,
                             atol=1e-5)
  # Trainable: gradients reach scale and bias as torch's autograd gives.
  np.testing.assert_allclose(np.asarray(g_params['scale']),
                             ref.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(g_params['bias']),
                             ref.bias.grad.numpy(), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(g_x),
                             xt.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-4,
                             atol=1e-4)
  with pytest.raises(ValueError, match='6 channels do not split into 4'):
    layers.GroupNorm(num_groups=4).init(jax.random.PRNGKey(0),
                                        jnp.zeros((1, 2, 2, 6)))


def test_group_norm_on_the_canvas_is_torch_on_the_padded_image():
  """With pad_hw, each image is normalised as torch normalises its map
  cropped to ceil(pad_hw / stride) (what MMDetection sees when it pads to
  pad_shape); the canvas beyond, here filled with large noise, does not
  count."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 8, 10, 8)).astype(np.float32)
  valid = [(4, 6), (7, 9)]  # stride 4: ceil([[16, 24], [25, 33]] / 4)
  for b, (h, w) in enumerate(valid):
    x[b, h:] = 1e3 * rng.normal(size=x[b, h:].shape)
    x[b, :, w:] = 1e3 * rng.normal(size=x[b, :, w:].shape)
  pad_hw = jnp.array([[16, 24], [25, 33]], jnp.int32)
  scale = rng.normal(size=8).astype(np.float32)
  bias = rng.normal(size=8).astype(np.float32)
  gn = layers.GroupNorm(num_groups=2)
  y = np.asarray(gn.apply({'params': {'scale': scale, 'bias': bias}},
                          jnp.asarray(x), pad_hw, 4))
  for b, (h, w) in enumerate(valid):
    _, _, want = _torch_gn(x[b:b + 1, :h, :w], scale, bias, 2)
    np.testing.assert_allclose(y[b, :h, :w], want.detach().numpy()[0],
                               rtol=1e-5, atol=1e-5)


def _masked_gn_formula(x, mask, scale, bias, groups, eps=1e-5):
  """The definition, reduced over a (B, H, W, G, C/G) view; plain autodiff
  differentiates it (the reference for ops/group_norm.py's closed-form
  backward)."""
  b, h, w, c = x.shape
  xg = x.reshape(b, h, w, groups, c // groups)
  m = mask.reshape(b, h, w, 1, 1)
  count = jnp.sum(m, axis=(1, 2, 4), keepdims=True) * (c // groups)
  mean = jnp.sum(xg * m, axis=(1, 2, 4), keepdims=True) / count
  var = jnp.sum(jnp.square(xg - mean) * m, axis=(1, 2, 4),
                keepdims=True) / count
  y = ((xg - mean) / jnp.sqrt(var + eps)).reshape(x.shape)
  return y * scale + bias


@pytest.mark.parametrize('masked', [False, True])
def test_group_norm_backward_equals_autodiff_of_the_definition(masked):
  """ops/group_norm.py's hand-written backward: the gradients of x (inside
  and outside the valid region: cells outside still depend on the
  statistics), scale and bias equal plain autodiff of the definition."""
  from maskrcnn_jax.ops import group_norm as group_norm_op
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(1.0, 2.0, (3, 7, 9, 12)), jnp.float32)
  mask = np.ones((3, 7, 9, 1), np.float32)
  if masked:
    mask[0, 5:] = 0
    mask[1, :, 4:] = 0
  mask = jnp.asarray(mask)
  scale = jnp.asarray(rng.normal(size=12), jnp.float32)
  bias = jnp.asarray(rng.normal(size=12), jnp.float32)
  cot = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

  def ours(x, scale, bias):
    return group_norm_op.group_norm(x, scale, bias,
                                    mask if masked else None, groups=3)

  def ref(x, scale, bias):
    return _masked_gn_formula(x, mask, scale, bias, 3)

  np.testing.assert_allclose(ours(x, scale, bias), ref(x, scale, bias),
                             rtol=1e-5, atol=1e-5)
  want = jax.grad(lambda *a: jnp.sum(ref(*a) * cot), (0, 1, 2))(
      x, scale, bias)
  got = jax.jit(jax.grad(lambda *a: jnp.sum(ours(*a) * cot), (0, 1, 2)))(
      x, scale, bias)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def _gn_keys(bn_key: str, shape, conv_modules) -> list:
  """(key, shape) pairs of MMDetection's GN model for `bn_key`, a key of
  the BN r50_fpn checkpoint: mmcv's build_norm_layer names GN layers
  'gn<postfix>' (bn1 -> gn1; the Sequential downsample keeps '1'),
  ConvModule(norm_cfg=GN) names its norm 'gn' and drops the conv bias
  (bias='auto'), and GroupNorm has weight and bias only."""
  module, _, leaf = bn_key.rpartition('.')
  parts = module.split('.')
  if module.startswith(conv_modules) and parts[-1] == 'conv':
    if leaf == 'bias':  # the norm after the conv, of its channels
      gn = module[:-len('conv')] + 'gn.'
      return [(gn + 'weight', tuple(shape)), (gn + 'bias', tuple(shape))]
    return [(bn_key, tuple(shape))]
  if leaf in ('running_mean', 'running_var', 'num_batches_tracked'):
    return []
  if parts[-1].startswith('bn'):
    parts[-1] = 'gn' + parts[-1][2:]
  return [('.'.join(parts + [leaf]), tuple(shape))]


def test_gn_state_dict_names_follow_mmdetection():
  """Every key and shape of a GN-everywhere r50_fpn (jax.eval_shape, no
  model run) equals the fixture checkpoint's MMDetection keys renamed as
  mmcv names GN layers; the converter round-trips the values."""
  c = config_lib.load_config(fixtures.config_path('r50_fpn'), _GN_ALL)
  abstract = build.abstract_variables(c)
  assert abstract['batch_stats'] == {}  # no BatchNorm anywhere
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map(
      lambda s: rng.standard_normal(s.shape, np.float32), abstract)
  sd = mmdet.variables_to_state_dict(variables, c)
  convs = ('neck.lateral_convs', 'neck.fpn_convs', 'roi_head.mask_head.convs')
  want = [kv for key, shape in fixtures.manifest('r50_fpn')['keys']
          for kv in _gn_keys(key, shape, convs)]
  assert sorted((k, tuple(v.shape)) for k, v in sd.items()) == sorted(want)
  assert 'backbone.layer1.0.gn3.bias' in sd and (
      'neck.fpn_convs.3.gn.weight' in sd)
  back = mmdet.state_dict_to_variables(sd, c, expected=abstract)
  flat_a = jax.tree_util.tree_leaves_with_path(variables['params'])
  flat_b = jax.tree_util.tree_leaves_with_path(back['params'])
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (_, a), (_, b) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # Trainable: from scratch (frozen_stages=-1) every GroupNorm trains; with
  # frozen_stages=1 the stem's gn1 and layer1 freeze as bn1 would.
  params = abstract['params']
  c.unlock()
  c.model.backbone.frozen_stages = -1
  assert all(jax.tree_util.tree_leaves(optim.trainable_mask(params, c)))
  c.model.backbone.frozen_stages = 1
  mask = optim.trainable_mask(params, c)
  assert not mask['backbone']['gn1']['scale']
  assert not mask['backbone']['layer1']['0']['gn2']['bias']
  assert mask['backbone']['layer2']['0']['gn2']['bias']
  assert mask['backbone']['layer2']['0']['downsample']['1']['scale']
  assert mask['neck']['fpn_convs']['0']['gn']['scale']
  assert mask['roi_head']['mask_head']['convs']['0']['gn']['bias']


def _tiny_gn_config():
  c = config_lib.base_config()
  c.model.num_classes = 3
  c.model.norm_groups = 4
  c.model.backbone.base_channels = 8
  c.model.backbone.frozen_stages = -1
  c.model.neck.in_channels = (32, 64, 128, 256)
  c.model.neck.out_channels = 16
  config_lib.apply_overrides(c, _GN_ALL)
  return c


def test_gn_features_on_the_canvas_equal_the_padded_image():
  """A small GN model: FPN features of an image on a larger canvas with
  noise beyond pad_hw equal those of the same image given exactly at its
  MMDetection pad_shape (64 x 96, a multiple of 32), level by level."""
  c = _tiny_gn_config()
  model = build.build_model(c)
  rng = np.random.default_rng(2)
  # Random weights of the model's shapes (GN renormalises after each conv).
  variables = jax.tree_util.tree_map(
      lambda s: 0.3 * rng.standard_normal(s.shape, np.float32),
      build.abstract_variables(c))
  features = jax.jit(lambda v, im, hw, pad: model.apply(
      v, im, hw, pad, method='features'))
  small = np.zeros((1, 64, 96, 3), np.uint8)
  small[0, :50, :90] = rng.integers(0, 255, (50, 90, 3), np.uint8)
  big = rng.integers(0, 255, (1, 128, 160, 3), np.uint8)  # noise canvas
  big[0, :64, :96] = small[0]
  hw = jnp.array([[50, 90]], jnp.int32)
  pad = jnp.array([[64, 96]], jnp.int32)
  want = features(variables, small, hw, pad)
  got = features(variables, big, hw, pad)
  for w, g, stride in zip(want, got, (4, 8, 16, 32, 64)):
    h, wd = -(-64 // stride), -(-96 // stride)
    assert w.shape[1:3] == (h, wd)
    np.testing.assert_allclose(np.asarray(g)[:, :h, :wd], np.asarray(w),
                               rtol=1e-4, atol=1e-4)
    assert float(np.std(np.asarray(w))) > 1e-3  # not a constant map


def test_bad_norm_is_named():
  c = config_lib.load_config(fixtures.config_path('r50_fpn'),
                             ['model.neck.norm="BN"'])
  with pytest.raises(ValueError, match='model.neck.norm'):
    build.abstract_variables(c)
