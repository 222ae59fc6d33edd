"""Schedules, frozen parameters, loss scaling and initialisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax import config as config_lib
from maskrcnn_jax.models import build
from maskrcnn_jax.train import init as init_lib
from maskrcnn_jax.train import optim
from maskrcnn_jax.train import state as state_lib


def _lr(row, steps, steps_per_epoch=100, batch=None):
  c = config_lib.load_config(f'configs/{row}.py')
  if batch:
    with c.unlocked():
      c.train.global_batch_size = batch
  s = optim.learning_rate(c, steps_per_epoch)
  return np.array([float(s(i)) for i in steps])


def test_warmup_is_linear_from_one_thousandth():
  lr = _lr('r50_fpn_1x', [0, 250, 499, 500])
  np.testing.assert_allclose(lr, [0.02 * 0.001, 0.02 * (0.001 + 0.999 / 2),
                                  0.02 * (0.001 + 0.999 * 499 / 500), 0.02],
                             rtol=1e-6)


@pytest.mark.parametrize('row,decays', [
    ('r50_fpn_1x', (8, 11)), ('r50_fpn_2x', (16, 22)),
    ('r50_fpn_mstrain_3x', (27, 33)),          # RepeatDataset x3, [9, 11]
    ('r50_caffe_fpn_mstrain_2x', (16, 23)),    # recorded 2.x recipe
    ('r50_caffe_fpn_mstrain_3x', (28, 34)),    # 36 epochs, not the 3.x bug
])
def test_step_decays_at_mmdetection_epochs(row, decays):
  spe = 100  # iterations per pass over the dataset
  first, second = (d * spe for d in decays)
  lr = _lr(row, [first - 1, first, second - 1, second], spe)
  np.testing.assert_allclose(lr, [0.02, 0.002, 0.002, 0.0002], rtol=1e-5)


def test_total_steps_cover_the_schedule():
  c = config_lib.load_config('configs/r50_fpn_mstrain_3x.py')
  assert optim.total_steps(c, 100) == 36 * 100
  c = config_lib.load_config('configs/r50_caffe_fpn_mstrain_3x.py')
  assert optim.total_steps(c, 100) == 36 * 100


def test_linear_lr_scaling_and_switch():
  assert _lr('r50_fpn_1x', [600], batch=32)[0] == pytest.approx(0.04)
  c = config_lib.load_config('configs/r50_fpn_1x.py',
                             ['train.global_batch_size=32',
                              'train.scale_lr=False'])
  assert optim.scaled_lr(c) == 0.02


def test_frozen_parameters_per_style():
  py = config_lib.load_config('configs/r50_fpn_1x.py')
  caffe = config_lib.load_config('configs/r50_caffe_fpn_1x.py')
  x8d = config_lib.load_config('configs/x101_32x8d_fpn_1x.py')
  stem = ['backbone', 'conv1', 'kernel']
  l1 = ['backbone', 'layer1', '0', 'conv2', 'kernel']
  l2_bn = ['backbone', 'layer2', '0', 'bn2', 'scale']
  l2_ds_bn = ['backbone', 'layer2', '0', 'downsample', '1', 'bias']
  l2_conv = ['backbone', 'layer2', '0', 'conv2', 'kernel']
  head = ['roi_head', 'bbox_head', 'fc_cls', 'kernel']
  for c in (py, caffe, x8d):
    assert optim.is_frozen(stem, c) and optim.is_frozen(l1, c)
    assert not optim.is_frozen(l2_conv, c) and not optim.is_frozen(head, c)
  assert not optim.is_frozen(l2_bn, py) and not optim.is_frozen(l2_ds_bn, py)
  assert optim.is_frozen(l2_bn, caffe) and optim.is_frozen(l2_ds_bn, caffe)
  assert optim.is_frozen(l2_bn, x8d)


def test_sgd_matches_pytorch_update_and_skips_frozen():
  c = config_lib.load_config('configs/r50_fpn_1x.py',
                             ['train.warmup_iters=0'])
  params = {'backbone': {'conv1': {'kernel': jnp.ones(3)}},
            'neck': {'w': jnp.array([1.0, -2.0, 3.0])}}
  tx, _ = optim.make_optimizer(c, params, steps_per_epoch=10)
  state = tx.init(params)
  grads = {'backbone': {'conv1': {'kernel': jnp.ones(3)}},
           'neck': {'w': jnp.array([0.5, 0.5, -1.0])}}
  buf = np.zeros(3)
  p = np.array([1.0, -2.0, 3.0])
  for _ in range(3):
    updates, state = tx.update(grads, state, params)
    params = jax.tree_util.tree_map(lambda a, u: a + u, params, updates)
    g = np.array([0.5, 0.5, -1.0]) + 1e-4 * p  # torch SGD: coupled decay
    buf = 0.9 * buf + g
    p = p - 0.02 * buf
  np.testing.assert_allclose(params['neck']['w'], p, rtol=1e-6)
  np.testing.assert_array_equal(params['backbone']['conv1']['kernel'],
                                np.ones(3))


def test_dynamic_loss_scale():
  s = state_lib.LossScale.create('dynamic')
  assert float(s.scale) == 2.0 ** 16
  s = s.update(jnp.bool_(False))
  assert float(s.scale) == 2.0 ** 15 and int(s.good_steps) == 0
  s = s.replace(period=3)
  for _ in range(3):
    s = s.update(jnp.bool_(True))
  assert float(s.scale) == 2.0 ** 16 and int(s.good_steps) == 0
  static = state_lib.LossScale.create('512')
  assert float(static.update(jnp.bool_(False)).scale) == 512.0


def test_finetune_merge_reinitialises_class_heads():
  c80 = config_lib.load_config('configs/r50_fpn_1x.py')
  c3 = config_lib.load_config('configs/r50_fpn_1x.py',
                              ['model.num_classes=3'])
  loaded = jax.device_get(build.init_variables(c80, jax.random.PRNGKey(1)))
  fresh = jax.device_get(build.init_variables(c3, jax.random.PRNGKey(2)))
  merged = init_lib.merge_detector(fresh, loaded)
  bbox = merged['params']['roi_head']['bbox_head']
  assert bbox['fc_cls']['kernel'].shape == (1024, 4)
  np.testing.assert_array_equal(
      bbox['fc_cls']['kernel'],
      fresh['params']['roi_head']['bbox_head']['fc_cls']['kernel'])
  np.testing.assert_array_equal(
      bbox['shared_fcs']['0']['kernel'],
      loaded['params']['roi_head']['bbox_head']['shared_fcs']['0']['kernel'])
  broken = jax.tree_util.tree_map(lambda x: x, loaded)
  del broken['params']['neck']['fpn_convs']['0']
  with pytest.raises(ValueError, match='missing params/neck/fpn_convs/0'):
    init_lib.merge_detector(fresh, broken)


def test_imagenet_backbone_init_from_torchvision_pth(tmp_path):
  torch = pytest.importorskip('torch')
  from maskrcnn_jax.convert import mmdet
  c = config_lib.load_config('configs/r50_fpn_1x.py')
  source = jax.device_get(build.init_variables(c, jax.random.PRNGKey(7)))
  state_dict = mmdet.variables_to_state_dict(source, c)
  tv = {k[len('backbone.'):]: torch.from_numpy(np.asarray(v))
        for k, v in state_dict.items() if k.startswith('backbone.')}
  tv['fc.weight'] = torch.zeros(1000, 2048)  # ImageNet classifier: ignored
  tv['fc.bias'] = torch.zeros(1000)
  path = tmp_path / 'resnet50.pth'
  torch.save(tv, path)
  c = config_lib.load_config('configs/r50_fpn_1x.py',
                             [f'train.init_backbone_from={path}',
                              'train.seed=3'])
  variables = init_lib.initial_variables(c, ['x'] * 80)
  for col in ('params', 'batch_stats'):
    for a, b in zip(jax.tree_util.tree_leaves(variables[col]['backbone']),
                    jax.tree_util.tree_leaves(source[col]['backbone'])):
      np.testing.assert_array_equal(a, b)
  # Everything else stays randomly initialised from train.seed.
  assert not np.array_equal(
      variables['params']['neck']['fpn_convs']['0']['conv']['kernel'],
      source['params']['neck']['fpn_convs']['0']['conv']['kernel'])
