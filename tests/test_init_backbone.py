"""ImageNet initialisation: MMDetection's backbone names, the cache, loading.

No network: the cache is filled with `.pth` files written (torch.save) in the
layouts of the real files, from deterministic weights.
"""

import logging
import zlib

import jax
import numpy as np
import pytest

from maskrcnn_jax import config as config_lib
from maskrcnn_jax import zoo
from maskrcnn_jax.convert import mmdet
from maskrcnn_jax.models import build
from maskrcnn_jax.train import init as init_lib
from maskrcnn_jax.train import loop

# mmengine's own tables, copied verbatim (mmengine 0.10.x, as used by
# MMDetection 3.3; github.com/open-mmlab/mmengine at 25434293). The ResNet /
# ResNeXt entries of mmengine/hub/torchvision_0.12.json (what
# get_torchvision_models() gives for plain names with torchvision >= 0.13;
# unchanged since d76bfc96, 2022-12-13):
MMENGINE_TORCHVISION_0_12 = {
    'resnet18': 'https://download.pytorch.org/models/resnet18-f37072fd.pth',
    'resnet34': 'https://download.pytorch.org/models/resnet34-b627a593.pth',
    'resnet50': 'https://download.pytorch.org/models/resnet50-0676ba61.pth',
    'resnet101': 'https://download.pytorch.org/models/resnet101-63fe2227.pth',
    'resnet152': 'https://download.pytorch.org/models/resnet152-394f9c45.pth',
    'resnext50_32x4d':
        'https://download.pytorch.org/models/resnext50_32x4d-7cdf4587.pth',
    'resnext101_32x8d':
        'https://download.pytorch.org/models/resnext101_32x8d-8ba56ff5.pth',
}
# The ResNet / ResNeXt entries of mmengine/hub/openmmlab.json:
MMENGINE_OPENMMLAB = {
    'detectron/resnet50_caffe': 'https://download.openmmlab.com/pretrain/third_party/resnet50_caffe-788b5fa3.pth',  # pylint: disable=line-too-long
    'detectron2/resnet50_caffe': 'https://download.openmmlab.com/pretrain/third_party/resnet50_msra-5891d200.pth',  # pylint: disable=line-too-long
    'detectron/resnet101_caffe': 'https://download.openmmlab.com/pretrain/third_party/resnet101_caffe-3ad79236.pth',  # pylint: disable=line-too-long
    'detectron2/resnet101_caffe': 'https://download.openmmlab.com/pretrain/third_party/resnet101_msra-6cc46731.pth',  # pylint: disable=line-too-long
    'detectron2/resnext101_32x8d': 'https://download.openmmlab.com/pretrain/third_party/resnext101_32x8d-1516f1aa.pth',  # pylint: disable=line-too-long
    'resnext50_32x4d': 'https://download.openmmlab.com/pretrain/third_party/resnext50-32x4d-0ab1a123.pth',  # pylint: disable=line-too-long
    'resnext101_32x4d': 'https://download.openmmlab.com/pretrain/third_party/resnext101_32x4d-a5af3160.pth',  # pylint: disable=line-too-long
    'resnext101_64x4d': 'https://download.openmmlab.com/pretrain/third_party/resnext101_64x4d-ee2c6f71.pth',  # pylint: disable=line-too-long
}
# mmengine/hub/deprecated.json (complete):
MMENGINE_DEPRECATED = {
    'resnet50_caffe': 'detectron/resnet50_caffe',
    'resnet50_caffe_bgr': 'detectron2/resnet50_caffe_bgr',
    'resnet101_caffe': 'detectron/resnet101_caffe',
    'resnet101_caffe_bgr': 'detectron2/resnet101_caffe_bgr',
}


def mmengine_url(name):
  """mmengine's load_from_torchvision / load_from_openmmlab name lookup."""
  if name.startswith('torchvision://'):
    return MMENGINE_TORCHVISION_0_12[name[len('torchvision://'):]]
  assert name.startswith('open-mmlab://'), name
  model = name[len('open-mmlab://'):]
  model = MMENGINE_DEPRECATED.get(model, model)
  return MMENGINE_OPENMMLAB[model]


# What each MMDetection 3.3 row's backbone init_cfg names (configs/mask_rcnn).
ROW_KINDS = {
    'r50_fpn': 'torchvision://resnet50',
    'r101_fpn': 'torchvision://resnet101',
    'r50_caffe_fpn': 'open-mmlab://detectron2/resnet50_caffe',
    'r101_caffe_fpn': 'open-mmlab://detectron2/resnet101_caffe',
    'x101_32x4d_fpn': 'open-mmlab://resnext101_32x4d',
    'x101_64x4d_fpn': 'open-mmlab://resnext101_64x4d',
    'x101_32x8d_fpn': 'open-mmlab://detectron2/resnext101_32x8d',
}

# The quick start's narrow layers (same depth, groups, style and names as
# the row): fast to build, and the shapes other tests compile anyway.
SMALL = ['model.backbone.base_channels=16',
         'model.neck.in_channels=(64, 128, 256, 512)',
         'model.neck.out_channels=64', 'model.rpn.feat_channels=64',
         'model.roi.fc_channels=256', 'model.roi.mask_channels=64',
         'model.roi.num_mask_convs=2']


def _zeros(config):
  """Variables of `config` filled with zeros (shapes only, no model run)."""
  return jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype),
                                build.abstract_variables(config))


def test_name_table_is_mmengines():
  names = list(zoo.IMAGENET_URLS) + list(zoo.IMAGENET_ALIASES)
  for name in names:
    assert zoo.imagenet_url(name) == mmengine_url(name), name
  assert zoo.imagenet_url('openmmlab://resnext101_64x4d') == mmengine_url(
      'open-mmlab://resnext101_64x4d')
  with pytest.raises(ValueError, match="init_backbone='torchvision://vgg16'"):
    zoo.imagenet_url('torchvision://vgg16')


def test_every_zoo_row_names_mmdetections_weights():
  rows = zoo.rows()
  assert len(rows) == 21
  for r in rows:
    kind = next(k for k in sorted(ROW_KINDS, key=len, reverse=True)
                if r.name.startswith(k + '_'))
    name = r.config.train.init_backbone
    assert name == ROW_KINDS[kind], r.name
    assert r.config.train.init_backbone_from == ''   # default: download
    assert zoo.imagenet_url(name) == mmengine_url(name)


def _weights(key, shape):
  """Deterministic fixture-like tensor: a function of (key name, shape)."""
  rng = np.random.default_rng(zlib.crc32(key.encode()))
  if key.endswith('num_batches_tracked'):
    return np.asarray(rng.integers(1, 1000), np.int64)
  if key.endswith('running_var'):
    return rng.uniform(0.5, 2.0, shape).astype(np.float32)
  return (0.1 * rng.standard_normal(shape)).astype(np.float32)


def _backbone_keys(config):
  """MMDetection key -> shape of the backbone (PyTorch layouts, no prefix)."""
  zeros = _zeros(config)
  sd = mmdet.variables_to_state_dict(
      {c: {'backbone': zeros[c]['backbone']} for c in zeros}, config)
  return {k[len('backbone.'):]: v.shape for k, v in sd.items()}


def write_imagenet_file(path, config, layout):
  """Writes an ImageNet backbone .pth in a real file's layout.

  torchvision: bare state dict with `fc.*` and `num_batches_tracked`;
  msra_caffe (detectron2 R-50/R-101.pkl converted by OpenMMLab): bare, no
  classifier, BN as an affine layer (running_mean 0, running_var 1);
  resnext (OpenMMLab third-party ResNeXt): {'state_dict': ...} with `fc.*`.
  Returns the written state dict (numpy).
  """
  import torch  # pylint: disable=g-import-not-at-top
  sd = {}
  for key, shape in _backbone_keys(config).items():
    if layout == 'msra_caffe':
      if key.endswith('num_batches_tracked'):
        continue
      if key.endswith('running_mean'):
        sd[key] = np.zeros(shape, np.float32)
        continue
      if key.endswith('running_var'):
        sd[key] = np.ones(shape, np.float32)
        continue
    sd[key] = _weights(key, shape)
  if layout in ('torchvision', 'resnext'):
    width = 32 * config.model.backbone.base_channels
    sd['fc.weight'] = _weights('fc.weight', (1000, width))
    sd['fc.bias'] = _weights('fc.bias', (1000,))
  tensors = {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}
  torch.save({'state_dict': tensors} if layout == 'resnext' else tensors,
             path)
  return sd


@pytest.mark.parametrize('row,layout', [
    ('r50_fpn_1x', 'torchvision'),
    ('r50_caffe_fpn_1x', 'msra_caffe'),
    ('x101_32x4d_fpn_1x', 'resnext'),
    ('x101_32x8d_fpn_1x', 'msra_caffe'),   # detectron2 FAIR X-101-32x8d
    ('r101_fpn_2x', 'torchvision'),
])
def test_configured_name_loads_from_the_cache(row, layout, tmp_path,
                                              monkeypatch, caplog):
  config = config_lib.load_config(f'configs/{row}.py', SMALL)
  name = config.train.init_backbone
  url = mmengine_url(name)
  cached = tmp_path / url.rsplit('/', 1)[1]
  written = write_imagenet_file(cached, config, layout)
  monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path))

  source = init_lib.backbone_source(config)
  assert (source.name, source.url, source.path) == (name, url, str(cached))
  zeros = _zeros(config)
  with caplog.at_level(logging.INFO, logger=init_lib.__name__):
    variables = init_lib.apply_backbone(zeros, config, source)
  line = [r.getMessage() for r in caplog.records
          if r.getMessage().startswith('ImageNet backbone:')]
  assert line == [f'ImageNet backbone: {name} = {url} (local file {cached})']

  params = variables['params']['backbone']
  stats = variables['batch_stats']['backbone']
  # Layout conversions, by hand: OIHW -> HWIO, BN weight -> scale.
  np.testing.assert_array_equal(
      params['conv1']['kernel'], written['conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params['bn1']['scale'],
                                written['bn1.weight'])
  np.testing.assert_array_equal(
      params['layer3']['1']['conv2']['kernel'],
      written['layer3.1.conv2.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      stats['layer4']['0']['downsample']['1']['var'],
      written['layer4.0.downsample.1.running_var'])
  # Every backbone tensor of the file, nothing else.
  back = mmdet.variables_to_state_dict(
      {c: {'backbone': variables[c]['backbone']} for c in variables}, config,
      include_num_batches_tracked=False)
  expected = {f'backbone.{k}': v for k, v in written.items()
              if not k.startswith('fc.') and 'num_batches_tracked' not in k}
  assert sorted(back) == sorted(expected)
  for k, v in expected.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)
  # The rest of the model is left as it was.
  for col in zeros:
    for part in zeros[col]:
      if part != 'backbone':
        assert variables[col][part] is zeros[col][part]


def test_missing_weights_stop_with_the_url_and_the_way_out(
    tmp_path, monkeypatch):
  # An unreachable URL (no network needed to fail): the table's entry for
  # the configured name points at a file that does not exist.
  name = 'torchvision://resnet50'
  url = (tmp_path / 'offline' / 'resnet50-0676ba61.pth').as_uri()
  monkeypatch.setitem(zoo.IMAGENET_URLS, name, url)
  monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / 'cache'))
  config = config_lib.load_config('configs/r50_fpn_1x.py')
  with pytest.raises(zoo.WeightsUnavailableError) as e:
    init_lib.backbone_source(config)
  msg = str(e.value)
  assert '\n' not in msg
  assert url in msg and 'train.init_backbone_from=FILE' in msg
  assert 'init_backbone_from=none' in msg
  assert not (tmp_path / 'cache' / 'resnet50-0676ba61.pth').exists()


def test_training_run_stops_before_the_first_step(tmp_path, monkeypatch):
  from maskrcnn_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'data'
  synthetic.generate(str(root), num_train=4, num_val=0, image_size=128,
                     seed=0)
  url = (tmp_path / 'offline' / 'resnet50-0676ba61.pth').as_uri()
  monkeypatch.setitem(zoo.IMAGENET_URLS, 'torchvision://resnet50', url)
  monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / 'cache'))
  config = config_lib.load_config('configs/quickstart.py', [
      f'data.train_ann={root}/annotations/instances_train.json',
      f'data.train_images={root}/train', "data.val_ann=''",
      'model.num_classes=6',  # the generator's default classes
      'train.init_backbone=torchvision://resnet50',
      "train.init_backbone_from=''", 'train.num_workers=0',
      'train.global_batch_size=2'])
  workdir = tmp_path / 'work'
  with pytest.raises(zoo.WeightsUnavailableError, match='resnet50-0676ba61'):
    loop.train_and_evaluate(config, str(workdir), max_steps=1)
  assert not list((workdir / 'checkpoints').glob('*'))
  assert not (workdir / 'final').exists()


def test_scratch_must_be_explicit_and_files_keep_working(tmp_path, caplog):
  quick = config_lib.load_config('configs/quickstart.py')
  assert quick.train.init_backbone_from == 'none'
  assert init_lib.backbone_source(quick) is None
  unnamed = config_lib.load_config('configs/r50_fpn_1x.py',
                                   ["train.init_backbone=''"])
  with pytest.raises(ValueError, match="init_backbone_from='none'"):
    init_lib.backbone_source(unnamed)
  with pytest.raises(FileNotFoundError, match='no such file'):
    init_lib.backbone_source(config_lib.load_config(
        'configs/r50_fpn_1x.py',
        [f'train.init_backbone_from={tmp_path}/missing.pth']))
  given = tmp_path / 'mine.pth'
  given.write_bytes(b'')
  source = init_lib.backbone_source(config_lib.load_config(
      'configs/r50_fpn_1x.py', [f'train.init_backbone_from={given}']))
  assert (source.name, source.path) == ('', str(given))

  # Explicit scratch: the variables stay random, and the log says so.
  small = config_lib.load_config('configs/r50_fpn_1x.py', SMALL + [
      'train.init_backbone_from=none'])
  zeros = _zeros(small)
  with caplog.at_level(logging.INFO, logger=init_lib.__name__):
    assert init_lib.apply_backbone(
        zeros, small, init_lib.backbone_source(small)) is zeros
  assert ("backbone trained from scratch: random initialisation "
          "(train.init_backbone_from='none')") in caplog.text
  assert 'the stem, layer1 keep their random weights' in caplog.text


def test_given_file_and_finetune_checkpoint_skip_the_download(
    tmp_path, monkeypatch, caplog):
  import torch  # pylint: disable=g-import-not-at-top
  # Unreachable weights for the configured name: neither path may touch them.
  monkeypatch.setitem(zoo.IMAGENET_URLS, 'torchvision://resnet50',
                      (tmp_path / 'nowhere.pth').as_uri())
  monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / 'cache'))
  config = config_lib.load_config('configs/r50_fpn_1x.py', SMALL)
  local = tmp_path / 'resnet50_local.pth'
  written = write_imagenet_file(local, config, 'torchvision')
  c = config_lib.load_config('configs/r50_fpn_1x.py', SMALL + [
      f'train.init_backbone_from={local}', 'train.seed=9'])
  with caplog.at_level(logging.INFO, logger=init_lib.__name__):
    variables = init_lib.initial_variables(c, ['c'] * 80)
  assert f'ImageNet backbone: {local} (train.init_backbone_from)' in (
      caplog.text)
  np.testing.assert_array_equal(
      variables['params']['backbone']['layer2']['0']['bn3']['bias'],
      written['layer2.0.bn3.bias'])
  np.testing.assert_array_equal(
      variables['batch_stats']['backbone']['layer1']['0']['bn1']['var'],
      written['layer1.0.bn1.running_var'])
  # Everything else is the random initialisation of train.seed.
  fresh = jax.device_get(build.init_variables(c, jax.random.PRNGKey(9)))
  np.testing.assert_array_equal(
      variables['params']['neck']['fpn_convs']['0']['conv']['kernel'],
      fresh['params']['neck']['fpn_convs']['0']['conv']['kernel'])

  # train.init_from: a detector checkpoint to fine-tune, backbone included.
  detector = jax.tree_util.tree_map(np.asarray, variables)
  sd = mmdet.variables_to_state_dict(detector, config)
  path = tmp_path / 'detector.pth'
  torch.save({'state_dict': {k: torch.from_numpy(np.array(v))
                             for k, v in sd.items()}}, path)
  c = config_lib.load_config('configs/r50_fpn_1x.py', SMALL + [
      f'train.init_from={path}', 'train.seed=9'])
  tuned = init_lib.initial_variables(c, ['c'] * 80)
  for a, b in zip(jax.tree_util.tree_leaves(tuned),
                  jax.tree_util.tree_leaves(detector)):
    np.testing.assert_array_equal(a, b)
