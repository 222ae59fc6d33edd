"""The 21 model-zoo row configs in configs/ against the MMDetection table.

The table below is copied from section 1 of the spec
(configs/mask_rcnn/README.md @ cfd5d3a9); schedules from section 4.
"""

import os
import re

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from maskrcnn_jax.config import (
    CAFFE2_X101_INPUT, CAFFE_STYLE_INPUT, MMDET_URL_ROOT,
    MS_CHOICE_SHORT_SIDES, PYTORCH_STYLE_INPUT, load_config)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, 'configs')

# Backbone -> (depth, groups, base_width, style, input normalisation,
#              norm_requires_grad, init_backbone).
BACKBONES = {
    'r50': (50, 1, 4, 'pytorch', PYTORCH_STYLE_INPUT, True,
            'torchvision://resnet50'),
    'r101': (101, 1, 4, 'pytorch', PYTORCH_STYLE_INPUT, True,
             'torchvision://resnet101'),
    'r50c': (50, 1, 4, 'caffe', CAFFE_STYLE_INPUT, False,
             'open-mmlab://detectron2/resnet50_caffe'),
    'r101c': (101, 1, 4, 'caffe', CAFFE_STYLE_INPUT, False,
              'open-mmlab://detectron2/resnet101_caffe'),
    'x32x4': (101, 32, 4, 'pytorch', PYTORCH_STYLE_INPUT, True,
              'open-mmlab://resnext101_32x4d'),
    'x64x4': (101, 64, 4, 'pytorch', PYTORCH_STYLE_INPUT, True,
              'open-mmlab://resnext101_64x4d'),
    # pytorch* : pytorch style, Caffe2/FAIR weights, BN fully frozen.
    'x32x8': (101, 32, 8, 'pytorch', CAFFE2_X101_INPUT, False,
              'open-mmlab://detectron2/resnext101_32x8d'),
}

# Schedule -> (epochs, milestones, dataset repeats).
SCHEDULES = {
    '1x': (12, (8, 11), 1),
    '2x': (24, (16, 22), 1),
    '3x': (12, (9, 11), 3),             # RepeatDataset(times=3)
    'r50c_ms2x': (24, (16, 23), 1),     # recorded 2.x recipe (3.x: [16, 22])
    'r50c_ms3x': (36, (28, 34), 1),     # recorded; 3.x config never decays
}

FIXED = ((1333, 800),)
CHOICE = tuple((1333, s) for s in (640, 672, 704, 736, 768, 800))
RANGE = ((1333, 640), (1333, 800))

# name: (backbone, schedule, scale mode, box AP, mask AP, 3.x config,
#        checkpoint file)
ROWS = {
    'r50_caffe_fpn_1x': (
        'r50c', '1x', 'fixed', 38.0, 34.4, 'mask-rcnn_r50-caffe_fpn_1x_coco.py',
        'mask_rcnn_r50_caffe_fpn_1x_coco_bbox_mAP-0.38__segm_mAP-0.344_20200504_231812-0ebd1859.pth'),
    'r50_fpn_1x': (
        'r50', '1x', 'fixed', 38.2, 34.7, 'mask-rcnn_r50_fpn_1x_coco.py',
        'mask_rcnn_r50_fpn_1x_coco_20200205-d4b0c5d6.pth'),
    'r50_fpn_fp16_1x': (
        'r50', '1x', 'fixed', 38.1, 34.7, 'mask-rcnn_r50_fpn_amp-1x_coco.py',
        'mask_rcnn_r50_fpn_fp16_1x_coco_20200205-59faf7e4.pth'),
    'r50_fpn_2x': (
        'r50', '2x', 'fixed', 39.2, 35.4, 'mask-rcnn_r50_fpn_2x_coco.py',
        'mask_rcnn_r50_fpn_2x_coco_bbox_mAP-0.392__segm_mAP-0.354_20200505_003907-3e542a40.pth'),
    'r101_caffe_fpn_1x': (
        'r101c', '1x', 'fixed', 40.4, 36.4, 'mask-rcnn_r101-caffe_fpn_1x_coco.py',
        'mask_rcnn_r101_caffe_fpn_1x_coco_20200601_095758-805e06c1.pth'),
    'r101_fpn_1x': (
        'r101', '1x', 'fixed', 40.0, 36.1, 'mask-rcnn_r101_fpn_1x_coco.py',
        'mask_rcnn_r101_fpn_1x_coco_20200204-1efe0ed5.pth'),
    'r101_fpn_2x': (
        'r101', '2x', 'fixed', 40.8, 36.6, 'mask-rcnn_r101_fpn_2x_coco.py',
        'mask_rcnn_r101_fpn_2x_coco_bbox_mAP-0.408__segm_mAP-0.366_20200505_071027-14b391c7.pth'),
    'x101_32x4d_fpn_1x': (
        'x32x4', '1x', 'fixed', 41.9, 37.5, 'mask-rcnn_x101-32x4d_fpn_1x_coco.py',
        'mask_rcnn_x101_32x4d_fpn_1x_coco_20200205-478d0b67.pth'),
    'x101_32x4d_fpn_2x': (
        'x32x4', '2x', 'fixed', 42.2, 37.8, 'mask-rcnn_x101-32x4d_fpn_2x_coco.py',
        'mask_rcnn_x101_32x4d_fpn_2x_coco_bbox_mAP-0.422__segm_mAP-0.378_20200506_004702-faef898c.pth'),
    'x101_64x4d_fpn_1x': (
        'x64x4', '1x', 'fixed', 42.8, 38.4, 'mask-rcnn_x101-64x4d_fpn_1x_coco.py',
        'mask_rcnn_x101_64x4d_fpn_1x_coco_20200201-9352eb0d.pth'),
    'x101_64x4d_fpn_2x': (
        'x64x4', '2x', 'fixed', 42.7, 38.1, 'mask-rcnn_x101-64x4d_fpn_2x_coco.py',
        'mask_rcnn_x101_64x4d_fpn_2x_coco_20200509_224208-39d6f70c.pth'),
    'x101_32x8d_fpn_1x': (
        'x32x8', '1x', 'fixed', 42.8, 38.3, 'mask-rcnn_x101-32x8d_fpn_1x_coco.py',
        'mask_rcnn_x101_32x8d_fpn_1x_coco_20220630_173841-0aaf329e.pth'),
    'r50_caffe_fpn_mstrain_2x': (
        'r50c', 'r50c_ms2x', 'choice', 40.3, 36.5,
        'mask-rcnn_r50-caffe_fpn_ms-poly-2x_coco.py',
        'mask_rcnn_r50_caffe_fpn_mstrain-poly_2x_coco_bbox_mAP-0.403__segm_mAP-0.365_20200504_231822-a75c98ce.pth'),
    'r50_caffe_fpn_mstrain_3x': (
        'r50c', 'r50c_ms3x', 'choice', 40.8, 37.0,
        'mask-rcnn_r50-caffe_fpn_ms-poly-3x_coco.py',
        'mask_rcnn_r50_caffe_fpn_mstrain-poly_3x_coco_bbox_mAP-0.408__segm_mAP-0.37_20200504_163245-42aa3d00.pth'),
    'r50_fpn_mstrain_3x': (
        'r50', '3x', 'range', 40.9, 37.1, 'mask-rcnn_r50_fpn_ms-poly-3x_coco.py',
        'mask_rcnn_r50_fpn_mstrain-poly_3x_coco_20210524_201154-21b550bb.pth'),
    'r101_caffe_fpn_mstrain_3x': (
        'r101c', '3x', 'range', 42.9, 38.5,
        'mask-rcnn_r101-caffe_fpn_ms-poly-3x_coco.py',
        'mask_rcnn_r101_caffe_fpn_mstrain-poly_3x_coco_20210526_132339-3c33ce02.pth'),
    'r101_fpn_mstrain_3x': (
        'r101', '3x', 'range', 42.7, 38.5, 'mask-rcnn_r101_fpn_ms-poly-3x_coco.py',
        'mask_rcnn_r101_fpn_mstrain-poly_3x_coco_20210524_200244-5675c317.pth'),
    'x101_32x4d_fpn_mstrain_3x': (
        'x32x4', '3x', 'range', 43.6, 39.0,
        'mask-rcnn_x101-32x4d_fpn_ms-poly-3x_coco.py',
        'mask_rcnn_x101_32x4d_fpn_mstrain-poly_3x_coco_20210524_201410-abcd7859.pth'),
    'x101_32x8d_fpn_mstrain_1x': (
        'x32x8', '1x', 'choice', 43.4, 39.0,
        'mask-rcnn_x101-32x8d_fpn_ms-poly-1x_coco.py',
        'mask_rcnn_x101_32x8d_fpn_mstrain-poly_1x_coco_20220630_170346-b4637974.pth'),
    'x101_32x8d_fpn_mstrain_3x': (
        'x32x8', '3x', 'range', 44.3, 39.5,
        'mask-rcnn_x101-32x8d_fpn_ms-poly-3x_coco.py',
        'mask_rcnn_x101_32x8d_fpn_mstrain-poly_3x_coco_20210607_161042-8bd2c639.pth'),
    'x101_64x4d_fpn_mstrain_3x': (
        'x64x4', '3x', 'range', 44.5, 39.7,
        'mask-rcnn_x101-64x4d_fpn_ms-poly_3x_coco.py',
        'mask_rcnn_x101_64x4d_fpn_mstrain-poly_3x_coco_20210526_120447-c376f129.pth'),
}


def _path(name):
  return os.path.join(CONFIG_DIR, name + '.py')


def _docstring(name):
  import ast
  with open(_path(name)) as f:
    return ast.get_docstring(ast.parse(f.read()))


def test_all_rows_present():
  assert len(ROWS) == 21
  present = {os.path.splitext(f)[0] for f in os.listdir(CONFIG_DIR)
             if f.endswith('.py')}
  missing = set(ROWS) - present
  assert not missing, f'missing row configs: {sorted(missing)}'


@pytest.mark.parametrize('name', sorted(ROWS))
def test_row(name):
  bb, sched, mode, box, mask, mmdet_cfg, ckpt = ROWS[name]
  c = load_config(_path(name))
  assert isinstance(c, ml_collections.ConfigDict)
  assert c.name == name

  # Provenance.
  assert c.mmdet.config == mmdet_cfg
  assert c.mmdet.checkpoint == ckpt
  assert c.mmdet.box_ap == pytest.approx(box)
  assert c.mmdet.mask_ap == pytest.approx(mask)
  group = 'fp16' if 'fp16' in name else 'mask_rcnn'
  stem = re.sub(r'(_bbox_mAP-.*)?_\d{8}(_\d{6})?-[0-9a-f]{8}\.pth$', '', ckpt)
  assert stem != ckpt and stem.endswith('_coco')
  url = f'{MMDET_URL_ROOT}/{group}/{stem}/{ckpt}'
  assert c.mmdet.url == url

  # Backbone and normalisation.
  depth, groups, width, style, norm, norm_grad, init = BACKBONES[bb]
  b = c.model.backbone
  assert (b.depth, b.groups, b.base_width, b.style) == (
      depth, groups, width, style)
  assert b.norm_requires_grad == norm_grad
  assert b.frozen_stages == 1 and b.norm_eval
  assert tuple(c.input.mean) == pytest.approx(norm['mean'])
  assert tuple(c.input.std) == pytest.approx(norm['std'])
  assert c.input.bgr_to_rgb == norm['bgr_to_rgb']
  assert c.input.test_scale == (1333, 800)
  assert c.train.init_backbone == init

  # Schedule.
  epochs, milestones, repeats = SCHEDULES[sched]
  assert c.train.epochs == epochs
  assert tuple(c.train.milestones) == milestones
  assert c.train.dataset_repeats == repeats
  assert c.train.base_lr == 0.02 and c.train.global_batch_size == 16

  # Training scales and GT mask format.
  assert c.train.scale_mode == mode
  assert tuple(map(tuple, c.train.scales)) == {
      'fixed': FIXED, 'choice': CHOICE, 'range': RANGE}[mode]
  assert c.train.mask_format == ('bitmap' if mode == 'fixed' else 'polygon')
  assert ('mstrain' in name) == (mode != 'fixed')

  # Precision.
  if name == 'r50_fpn_fp16_1x':
    assert c.model.dtype == 'float16'
    assert c.train.loss_scale == 'dynamic'
  else:
    assert c.model.dtype == 'float32'

  # Docstring: run/eval/convert commands, provenance and APs.
  doc = _docstring(name)
  assert doc is not None
  assert doc.startswith(f'python train.py --config=configs/{name}.py')
  assert f'python eval.py --config configs/{name}.py --checkpoint CKPT' in doc
  assert f'python -m maskrcnn_jax.convert --config configs/{name}.py' in doc
  assert mmdet_cfg in doc
  assert ckpt in doc
  assert url in doc
  assert f'box AP {box:.1f}' in doc
  assert f'mask AP {mask:.1f}' in doc


def test_choice_scales_match_constant():
  assert CHOICE == tuple((1333, s) for s in MS_CHOICE_SHORT_SIDES)


def test_missing_config_file():
  path = os.path.join(CONFIG_DIR, 'no_such_row.py')
  with pytest.raises(FileNotFoundError, match=re.escape(path)):
    load_config(path)


def _parse_flags(argv):
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file(
      'config', None, 'config file', flag_values=fv, lock_config=True,
      sys_argv=argv)
  fv(argv)
  return fv.config


# ml_collections' own file loader uses the deprecated load_module().
@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_command_line_overrides():
  path = _path('r50_fpn_1x')
  c = _parse_flags([
      'train.py', f'--config={path}', '--config.train.epochs=3',
      '--config.train.scales=((1333, 700),)', '--config.model.dtype=bfloat16'])
  assert c.name == 'r50_fpn_1x'
  assert c.train.epochs == 3
  assert tuple(c.train.scales) == ((1333, 700),)
  assert c.model.dtype == 'bfloat16'
  assert c.is_locked


# ml_collections' own file loader uses the deprecated load_module().
@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_command_line_typo_fails():
  path = _path('r50_fpn_1x')
  with pytest.raises(AttributeError, match='epoch'):
    _parse_flags(['train.py', f'--config={path}', '--config.train.epoch=3'])


def test_locked_config_rejects_unknown_key():
  c = load_config(_path('r50_fpn_1x'))
  c.lock()
  with pytest.raises(AttributeError, match='milestone'):
    c.train.milestone = (8, 11)
  with pytest.raises(AttributeError, match='num_clases'):
    c.model.num_clases = 80
  c.train.milestones = (7, 10)  # known keys stay settable
  assert c.train.milestones == (7, 10)
