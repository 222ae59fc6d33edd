"""Schedules, SGD, frozen parameters, loss scaling and initialisation."""

import collections
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maskrcnn_jax import config as config_lib
from maskrcnn_jax.convert import mmdet
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


def test_warmup_is_mmengine_linear_lr():
  # LinearLR(start_factor=0.001, begin=0, end=500): total_iters = 499, so
  # the full rate is reached at iteration 499.
  lr = _lr('r50_fpn_1x', [0, 250, 498, 499, 500, 700])
  np.testing.assert_allclose(
      lr, [0.02 * 0.001, 0.02 * (0.001 + 0.999 * 250 / 499),
           0.02 * (0.001 + 0.999 * 498 / 499), 0.02, 0.02, 0.02], rtol=1e-6)
  c = config_lib.load_config('configs/r50_fpn_1x.py',
                             ['train.warmup_iters=0'])
  assert float(optim.learning_rate(c, 100)(0)) == pytest.approx(0.02)


class _Optimizer:
  """The one param group an mmengine scheduler edits."""

  def __init__(self, lr):
    self.param_groups = [dict(lr=lr)]


class _Scheduler:
  """mmengine `_ParamScheduler` (optim/scheduler/param_scheduler.py)."""

  def __init__(self, optimizer, begin, end, by_epoch):
    self.optimizer, self.begin, self.end = optimizer, begin, end
    self.by_epoch = by_epoch
    for group in optimizer.param_groups:
      group.setdefault('initial_lr', group['lr'])
    self.last_step = -1
    self._global_step = -1
    self.step()

  def step(self):
    self._global_step += 1
    if self.begin <= self._global_step < self.end:
      self.last_step += 1
      for group, value in zip(self.optimizer.param_groups,
                              self._get_value()):
        group['lr'] = value


class _LinearLR(_Scheduler):
  """mmengine LinearParamScheduler: chainable form."""

  def __init__(self, optimizer, start_factor, end_factor=1.0, begin=0,
               end=10 ** 9, by_epoch=True):
    self.start_factor, self.end_factor = start_factor, end_factor
    self.total_iters = end - begin - 1
    super().__init__(optimizer, begin, end, by_epoch)

  def _get_value(self):
    groups = self.optimizer.param_groups
    if self.last_step == 0:
      return [g['lr'] * self.start_factor for g in groups]
    return [g['lr'] * (1. + (self.end_factor - self.start_factor) / (
        self.total_iters * self.start_factor + (self.last_step - 1) *
        (self.end_factor - self.start_factor))) for g in groups]


class _MultiStepLR(_Scheduler):
  """mmengine MultiStepParamScheduler: chainable form."""

  def __init__(self, optimizer, milestones, gamma=0.1, begin=0, end=10 ** 9,
               by_epoch=True):
    self.milestones = collections.Counter(milestones)
    self.gamma = gamma
    super().__init__(optimizer, begin, end, by_epoch)

  def _get_value(self):
    groups = self.optimizer.param_groups
    if self.last_step not in self.milestones:
      return [g['lr'] for g in groups]
    return [g['lr'] * self.gamma ** self.milestones[self.last_step]
            for g in groups]


@functools.lru_cache(maxsize=None)
def _mmengine_lrs(epochs, milestones, repeats, passes_len, iter_based):
  """lr of every iteration under MMDetection 3.3's param_scheduler.

  LinearLR(start_factor=0.001, by_epoch=False, begin=0, end=500) and
  MultiStepLR(begin=0, end=epochs, by_epoch=True, milestones, gamma=0.1),
  stepped as mmengine's ParamSchedulerHook steps them (iteration schedulers
  after every iteration, epoch ones after every epoch), over an epoch of
  `repeats` passes of `passes_len` iterations (RepeatDataset). With
  iter_based, MultiStepLR is first converted to iterations
  (`convert_to_iter_based=True`: build_iter_from_epoch).
  """
  epoch_len = passes_len * repeats
  opt = _Optimizer(0.02)
  schedulers = [_LinearLR(opt, start_factor=0.001, by_epoch=False, begin=0,
                          end=500)]
  if iter_based:
    schedulers.append(_MultiStepLR(
        opt, milestones=[m * epoch_len for m in milestones], begin=0,
        end=epochs * epoch_len, by_epoch=False))
  else:
    schedulers.append(_MultiStepLR(opt, milestones=list(milestones), begin=0,
                                   end=epochs, by_epoch=True))
  lrs = []
  for _ in range(epochs):
    for _ in range(epoch_len):
      lrs.append(opt.param_groups[0]['lr'])   # optimizer.step() uses it
      for s in schedulers:
        if not s.by_epoch:
          s.step()
    for s in schedulers:
      if s.by_epoch:
        s.step()
  return np.asarray(lrs)


# MMDetection 3.3's schedule of every row: (max_epochs, MultiStepLR
# milestones, RepeatDataset times); the R-50 caffe ms-poly rows follow the
# recorded 2.x recipes (../shared/docs/mmdet_mask_rcnn_spec.md, section 4).
_1X, _2X, _3X = (12, (8, 11), 1), (24, (16, 22), 1), (12, (9, 11), 3)
MMDET_SCHEDULES = {
    'r50_fpn_1x': _1X, 'r50_fpn_fp16_1x': _1X, 'r101_fpn_1x': _1X,
    'r50_caffe_fpn_1x': _1X, 'r101_caffe_fpn_1x': _1X,
    'x101_32x4d_fpn_1x': _1X, 'x101_64x4d_fpn_1x': _1X,
    'x101_32x8d_fpn_1x': _1X, 'x101_32x8d_fpn_mstrain_1x': _1X,
    'r50_fpn_2x': _2X, 'r101_fpn_2x': _2X, 'x101_32x4d_fpn_2x': _2X,
    'x101_64x4d_fpn_2x': _2X,
    'r50_fpn_mstrain_3x': _3X, 'r101_fpn_mstrain_3x': _3X,
    'r101_caffe_fpn_mstrain_3x': _3X, 'x101_32x4d_fpn_mstrain_3x': _3X,
    'x101_64x4d_fpn_mstrain_3x': _3X, 'x101_32x8d_fpn_mstrain_3x': _3X,
    'r50_caffe_fpn_mstrain_2x': (24, (16, 23), 1),
    'r50_caffe_fpn_mstrain_3x': (36, (28, 34), 1),
}


def test_every_row_has_a_reference_schedule():
  from maskrcnn_jax import zoo  # pylint: disable=g-import-not-at-top
  assert sorted(MMDET_SCHEDULES) == sorted(r.name for r in zoo.rows())


@pytest.mark.parametrize('row', sorted(MMDET_SCHEDULES))
def test_lr_of_every_iteration_matches_mmengine(row):
  epochs, milestones, repeats = MMDET_SCHEDULES[row]
  c = config_lib.load_config(f'configs/{row}.py')
  # 7330 iterations per pass: COCO train2017 at batch 16; 40: a short set
  # where the milestones fall inside the warmup.
  for passes_len in (7330, 40):
    n = optim.total_steps(c, passes_len)
    assert n == epochs * repeats * passes_len
    ours = np.asarray(optim.learning_rate(c, passes_len)(jnp.arange(n)))
    for iter_based in (False, True):
      ref = _mmengine_lrs(epochs, milestones, repeats, passes_len, iter_based)
      np.testing.assert_allclose(ours, ref, rtol=2e-6, atol=0,
                                 err_msg=f'{row} {passes_len} {iter_based}')


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


# The quick start's narrow layers (same parameter names as the row).
SMALL = ['model.backbone.base_channels=16',
         'model.neck.in_channels=(64, 128, 256, 512)',
         'model.neck.out_channels=64', 'model.rpn.feat_channels=64',
         'model.roi.fc_channels=256', 'model.roi.mask_channels=64',
         'model.roi.num_mask_convs=2']


def _mmdet_frozen(key, config):
  """MMDetection's frozen parameters (requires_grad=False), by key.

  ResNet._freeze_stages: conv1, bn1 and layer1..frozen_stages;
  norm_cfg.requires_grad=False: every backbone BatchNorm weight and bias.
  """
  b = config.model.backbone
  stages = ['conv1.', 'bn1.'] + [f'layer{i}.'
                                 for i in range(1, b.frozen_stages + 1)]
  if any(key.startswith('backbone.' + s) for s in stages):
    return True
  bn = re.match(r'backbone\..*\.(bn\d|downsample\.1)\.(weight|bias)$', key)
  return bool(bn) and not b.norm_requires_grad


@pytest.mark.parametrize('row', ['r50_fpn_1x', 'r50_caffe_fpn_1x'])
def test_sgd_step_equals_torch_sgd_on_the_model(row):
  import torch  # pylint: disable=g-import-not-at-top
  c = config_lib.load_config(f'configs/{row}.py', SMALL)
  abstract = build.abstract_variables(c)['params']
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(
      lambda a: (0.1 * rng.standard_normal(a.shape)).astype(np.float32),
      abstract)
  steps = 4
  grads = [jax.tree_util.tree_map(
      lambda a: rng.standard_normal(a.shape).astype(np.float32), abstract)
           for _ in range(steps)]
  tx, schedule = optim.make_optimizer(c, params, steps_per_epoch=1000)
  to_sd = lambda p: mmdet.variables_to_state_dict({'params': p}, c)

  # MMDetection: torch.optim.SGD(lr=0.02, momentum=0.9, weight_decay=1e-4)
  # over the parameters with requires_grad, lr set by LinearLR each step.
  start = to_sd(params)
  torch_params = {k: torch.tensor(v) for k, v in start.items()}
  trainable = [k for k in torch_params if not _mmdet_frozen(k, c)]
  frozen = [k for k in torch_params if _mmdet_frozen(k, c)]
  assert frozen and any(k.startswith('backbone.layer2') for k in trainable)
  sgd = torch.optim.SGD([torch_params[k] for k in trainable], lr=0.02,
                        momentum=0.9, weight_decay=1e-4)

  jax_params = jax.tree_util.tree_map(jnp.asarray, params)
  state = tx.init(jax_params)
  update = jax.jit(tx.update)
  for i in range(steps):
    for group in sgd.param_groups:
      group['lr'] = 0.02 * (0.001 + 0.999 * i / 499)
    g = to_sd(grads[i])
    for k in trainable:
      torch_params[k].grad = torch.tensor(g[k])
    sgd.step()
    updates, state = update(grads[i], state, jax_params)
    jax_params = optax.apply_updates(jax_params, updates)
    assert float(schedule(i)) == pytest.approx(0.02 * (0.001 + 0.999 * i /
                                                       499), rel=1e-6)
  ours = to_sd(jax.device_get(jax_params))
  for k in trainable:
    np.testing.assert_allclose(ours[k], torch_params[k].numpy(), rtol=1e-5,
                               atol=1e-7, err_msg=k)
    assert not np.array_equal(ours[k], start[k]), k
  for k in frozen:
    np.testing.assert_array_equal(ours[k], start[k], err_msg=k)


def test_norm_eval_false_is_rejected():
  c = config_lib.load_config('configs/r50_fpn_1x.py',
                             ['model.backbone.norm_eval=False'])
  with pytest.raises(ValueError) as e:
    optim.make_optimizer(c, {}, steps_per_epoch=10)
  assert 'model.backbone.norm_eval=False' in str(e.value)
  assert '\n' not in str(e.value)
  optim.check_norm_eval(config_lib.load_config('configs/r50_fpn_1x.py'))


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
  c80 = config_lib.load_config('configs/r50_fpn_1x.py', SMALL)
  c3 = config_lib.load_config('configs/r50_fpn_1x.py',
                              SMALL + ['model.num_classes=3'])
  loaded = jax.device_get(build.init_variables(c80, jax.random.PRNGKey(1)))
  fresh = jax.device_get(build.init_variables(c3, jax.random.PRNGKey(2)))
  merged = init_lib.merge_detector(fresh, loaded)
  bbox = merged['params']['roi_head']['bbox_head']
  assert bbox['fc_cls']['kernel'].shape == (256, 4)
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
