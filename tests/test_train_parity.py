"""Training losses and gradient norms against MMDetection 3.3.0's own.

../shared/fixtures/train holds, per architecture and image (batch of one,
single scale, no flip, samplers taking every candidate), MMDetection's five
losses and the squared gradient norm of total_loss per two-part module
prefix. tools/loss_report.py --deterministic-sampling must reproduce them:
losses to ~1e-4 relative, gradient norms to ~1e-3 relative.
"""

import functools
import json
import os
import subprocess
import sys

import pytest

from maskrcnn_jax import config as config_lib
from maskrcnn_jax.testing import fixtures
from maskrcnn_jax.testing import make_checkpoint
from maskrcnn_jax.train import loss_report
from tests.conftest import REPO

TRAIN = os.path.join(fixtures.fixtures_dir(), 'train')
ANN = os.path.join(TRAIN, 'coco', 'annotations.json')
IMAGES = os.path.join(TRAIN, 'coco', 'images')


def _reference(arch, file_name):
  stem = os.path.splitext(file_name)[0]
  with open(os.path.join(TRAIN, f'{arch}__{stem}.json')) as f:
    return json.load(f)


def _check(report, arch, images=('train_landscape.png',
                                  'train_portrait.png')):
  assert [r['file_name'] for r in report] == list(images)
  for entry in report:
    ref = _reference(arch, entry['file_name'])
    for name, value in ref['losses'].items():
      assert entry['losses'][name] == pytest.approx(value, rel=1e-4,
                                                    abs=1e-7), name
    assert entry['total_loss'] == pytest.approx(ref['total_loss'], rel=1e-4)
    ours = entry['grad_sq_norm_by_module']
    assert set(ours) == set(ref['grad_sq_norm_by_module']), (
        'modules with gradients differ (frozen parameters?)')
    for prefix, value in ref['grad_sq_norm_by_module'].items():
      assert ours[prefix] == pytest.approx(value, rel=1e-3), prefix


@functools.lru_cache(maxsize=None)
def _checkpoint(arch, tmp_root):
  return make_checkpoint.make_checkpoint(arch, os.path.join(tmp_root, arch))


def test_loss_report_cli_reproduces_r50_fpn(tmp_path):
  pth = fixtures.write_pth('r50_fpn', str(tmp_path / 'r50.pth'))
  out = subprocess.run(
      [sys.executable, '-m', 'tools.loss_report', '--config',
       fixtures.config_path('r50_fpn'), '--checkpoint', pth, '--ann', ANN,
       '--images', IMAGES, '--deterministic-sampling',
       '--file-names', 'train_landscape.png'],
      cwd=REPO, capture_output=True, text=True, timeout=1800,
      env=dict(os.environ, PYTHONPATH=REPO))
  assert out.returncode == 0, out.stderr[-3000:]
  _check(json.loads(out.stdout), 'r50_fpn', images=('train_landscape.png',))


# One image each keeps CI time down (each is a full-resolution backward
# pass, a minute on 2 CPU cores); every architecture and both canvas
# orientations are covered.
@pytest.mark.parametrize('arch,image', [('r50_caffe_fpn', 'train_portrait'),
                                        ('x101_32x4d_fpn', 'train_landscape')])
def test_loss_report_reproduces(arch, image, tmp_path_factory):
  ckpt = _checkpoint(arch, str(tmp_path_factory.getbasetemp()))
  config = config_lib.load_config(fixtures.config_path(arch))
  report = loss_report.loss_report(config, ckpt, ANN, IMAGES,
                                   deterministic=True,
                                   file_names=[image + '.png'])
  _check(report, arch, images=(image + '.png',))
