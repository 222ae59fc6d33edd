"""tools/: analyze_logs, browse_dataset and make_model_zoo, run as
subprocesses (`python -m tools.<name>`) on small generated inputs, and their
library side (maskrcnn_jax.log_analysis, maskrcnn_jax.browse)."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from maskrcnn_jax import browse
from maskrcnn_jax import log_analysis
from maskrcnn_jax import zoo
from maskrcnn_jax.data import synthetic
from tests.conftest import REPO


def _run(*args):
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=300)


def _assert_drawn_png(path, shape=None):
  assert os.path.isfile(path), path
  image = cv2.imread(str(path))
  assert image is not None and image.ndim == 3, path
  if shape is not None:
    assert image.shape[:2] == tuple(shape)
  # Not a blank image: several distinct colours, no single one dominating.
  colours, counts = np.unique(image.reshape(-1, 3), axis=0,
                              return_counts=True)
  assert len(colours) > 3 and counts.max() < 0.99 * counts.sum(), path
  return image


def _make_tool(name):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(REPO, 'tools', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# --------------------------------------------------------------------------
# analyze_logs.py


def _write_log(workdir, steps=40, scale=1.0):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    for s in range(5, steps + 1, 5):
      f.write(json.dumps({
          'step': s, 'total_loss': scale * 3 / s ** 0.5,
          'loss_cls': scale / s ** 0.5, 'loss_mask': scale * 0.7 / s ** 0.3,
          'lr': 0.02 * min(1.0, s / 20), 'images_per_sec': 2.0 + s / 40}) + '\n')
      if s % 20 == 0:
        f.write(json.dumps({'step': s, 'val/bbox_mAP': s / 100 * scale,
                            'val/segm_mAP': s / 120 * scale}) + '\n')
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump({'train': {'global_batch_size': 4}}, f)
  return os.path.join(workdir, 'metrics.jsonl')


def test_analyze_logs_plot_curve_losses_lr_and_ap(tmp_path):
  log = _write_log(tmp_path / 'run_a')
  r = _run('-m', 'tools.analyze_logs', 'plot_curve', log, '--keys', 'loss_cls',
           'loss_mask', '--out', str(tmp_path / 'losses.png'))
  assert r.returncode == 0, r.stderr
  _assert_drawn_png(tmp_path / 'losses.png')
  r = _run('-m', 'tools.analyze_logs', 'plot_curve', log, '--keys', 'lr',
           '--out', str(tmp_path / 'lr.png'), '--title', 'lr')
  assert r.returncode == 0, r.stderr
  _assert_drawn_png(tmp_path / 'lr.png')
  # Two runs compared, AP keys (evaluation lines only), explicit legend.
  log_b = _write_log(tmp_path / 'run_b', scale=0.8)
  r = _run('-m', 'tools.analyze_logs', 'plot_curve', log, log_b, '--keys',
           'val/bbox_mAP', 'val/segm_mAP', '--legend', 'a_bbox', 'a_segm',
           'b_bbox', 'b_segm', '--out', str(tmp_path / 'ap.png'))
  assert r.returncode == 0, r.stderr
  ap = _assert_drawn_png(tmp_path / 'ap.png')
  losses = cv2.imread(str(tmp_path / 'losses.png'))
  assert ap.shape != losses.shape or np.any(ap != losses)


def test_analyze_logs_load_and_errors(tmp_path):
  log = _write_log(tmp_path / 'run')
  series = log_analysis.load_log(log)
  assert [s for s, _ in series['val/bbox_mAP']] == [20, 40]
  assert len(series['loss_cls']) == 8 and 'step' not in series
  # Unknown key: one line, exit 2 (as every entry point) and the keys the
  # log has.
  r = _run('-m', 'tools.analyze_logs', 'plot_curve', log, '--keys', 'loss_clss',
           '--out', str(tmp_path / 'x.png'))
  assert r.returncode == 2 and 'loss_cls' in r.stderr
  assert r.stderr.count('\n') == 1 and r.stderr.startswith('error: ')
  assert not (tmp_path / 'x.png').exists()
  r = _run('-m', 'tools.analyze_logs', 'plot_curve', log, '--keys', 'loss_cls',
           '--legend', 'a', 'b', '--out', str(tmp_path / 'x.png'))
  assert r.returncode == 2 and '--legend' in r.stderr
  r = _run('-m', 'tools.analyze_logs', 'plot_curve', str(tmp_path / 'nope.jsonl'))
  assert r.returncode == 2 and 'not found' in r.stderr


def test_analyze_logs_cal_train_time(tmp_path):
  log = _write_log(tmp_path / 'run')
  r = _run('-m', 'tools.analyze_logs', 'cal_train_time', log)
  assert r.returncode == 0, r.stderr
  # Last point: 3.0 images/s with a global batch of 4 -> 1.333 s/step.
  assert 'last step: 40' in r.stdout
  assert '1.333 s/step' in r.stdout, r.stdout


# --------------------------------------------------------------------------
# browse_dataset.py


@pytest.fixture(scope='module')
def tiny_set(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('browse'))
  synthetic.generate(root, num_train=3, num_val=1, image_size=96, seed=1)
  return root


def test_browse_dataset_ground_truth(tiny_set, tmp_path):
  ann = os.path.join(tiny_set, 'annotations', 'instances_train.json')
  images = os.path.join(tiny_set, 'train')
  out = tmp_path / 'gt'
  r = _run('-m', 'tools.browse_dataset', '--ann', ann, '--images', images,
           '--out-dir', str(out), '--max-images', '2')
  assert r.returncode == 0, r.stderr
  assert '6 classes (circle, square' in r.stdout
  data = json.load(open(ann))
  drawn = sorted(os.listdir(out))
  assert len(drawn) == 2
  for entry in data['images'][:2]:
    stem = os.path.splitext(entry['file_name'])[0]
    image = _assert_drawn_png(out / f'{stem}.png',
                              (entry['height'], entry['width']))
    original = cv2.imread(os.path.join(images, entry['file_name']))
    assert np.mean(np.any(image != original, axis=-1)) > 0.01  # GT drawn


def test_browse_dataset_train_pipeline(tiny_set, tmp_path):
  ann = os.path.join(tiny_set, 'annotations', 'instances_train.json')
  out = tmp_path / 'train'
  r = _run('-m', 'tools.browse_dataset', '--ann', ann, '--images',
           os.path.join(tiny_set, 'train'), '--out-dir', str(out),
           '--config', 'configs/quickstart.py', '--train-pipeline',
           '--config.input.canvases=((192, 256), (256, 192))')
  assert r.returncode == 0, r.stderr
  assert len(os.listdir(out)) == 3
  canvases = {(192, 256), (256, 192)}  # the fixed canvases given (H, W)
  for name in os.listdir(out):
    image = _assert_drawn_png(out / name)
    assert image.shape[:2] in canvases
  r = _run('-m', 'tools.browse_dataset', '--ann', ann, '--images',
           os.path.join(tiny_set, 'train'), '--out-dir', str(out),
           '--train-pipeline')
  assert r.returncode == 2 and '--config' in r.stderr


def test_browse_train_pastes_compact_masks(tiny_set):
  """The pasted compact masks cover the transformed GT boxes' shapes."""
  from maskrcnn_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.data import coco, transforms  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(
      'configs/quickstart.py',
      ['train.flip_prob=0.0', 'input.canvases=((192, 256), (256, 192))'])
  cfg = transforms.TransformConfig.from_config(config, train=True)
  dataset = coco.load_coco(
      os.path.join(tiny_set, 'annotations', 'instances_train.json'),
      os.path.join(tiny_set, 'train'), train=True)
  record = dataset.records[0]
  drawn, info = browse.browse_train(record, dataset.class_names, cfg,
                                    np.random.default_rng(0))
  assert 'resized to' in info and 'flipped' not in info
  ex = transforms.train_transform(record, coco.load_image(record),
                                  np.random.default_rng(0), cfg)
  assert drawn.shape == ex['image'].shape
  # Each pasted mask lies inside its box and fills a good part of it.
  for m, b in zip(ex['gt_masks'][ex['gt_valid']],
                  ex['gt_boxes'][ex['gt_valid']]):
    mask = transforms.paste_compact(m, b, ex['image'].shape[:2]) >= 0.5
    ys, xs = np.nonzero(mask)
    assert len(ys)
    assert xs.min() >= b[0] - 1 and xs.max() <= b[2] + 1
    assert ys.min() >= b[1] - 1 and ys.max() <= b[3] + 1


# --------------------------------------------------------------------------
# make_model_zoo.py / MODEL_ZOO.md


def test_model_zoo_md_is_up_to_date():
  r = _run('-m', 'tools.make_model_zoo', '--check')
  assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]


def test_model_zoo_md_has_every_row():
  text = open(os.path.join(REPO, 'MODEL_ZOO.md')).read()
  rows = zoo.rows()
  assert len(rows) == 21
  for row in rows:
    c = row.config
    assert f'[`{c.mmdet.checkpoint}`]({c.mmdet.url})' in text, row.name
    assert f'python -m maskrcnn_jax.convert --config {row.path}' in text
    assert f'python eval.py --config {row.path}' in text
    assert f'python demo.py --config {row.path}' in text
    assert (f'| {c.mmdet.box_ap:.1f} | {c.mmdet.mask_ap:.1f} | not measured '
            in text), row.name
  # No AP is claimed for a zoo row; the quick start's figures are README's.
  make_model_zoo = _make_tool('make_model_zoo')
  q = make_model_zoo.QUICKSTART
  readme = re.sub(r'\s+', ' ', open(os.path.join(REPO, 'README.md')).read())
  assert (f'bbox mAP {q["bbox_map"]:.3f} / segm mAP {q["segm_map"]:.3f}'
          in readme)
  assert f'{q["steps"]} steps' in readme
  assert f'| {q["bbox_map"]:.3f} | {q["segm_map"]:.3f} |' in text
