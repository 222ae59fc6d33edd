"""Predictor: compile counts, batching, dtypes, devices, demo entry point."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from maskrcnn_jax import config as config_lib
from maskrcnn_jax import predictor as predictor_lib
from maskrcnn_jax.testing import fixtures
from tests.conftest import REPO, SMALL_INPUT


def _images(sizes, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
          for h, w in sizes]


@pytest.fixture(scope='module')
def small_predictor(fixture_checkpoint):
  config = config_lib.load_config('configs/r50_fpn_1x.py', SMALL_INPUT)
  return predictor_lib.Predictor.from_checkpoint(config, fixture_checkpoint,
                                                 batch_size=2)


def test_stream_compiles_once_per_canvas(small_predictor):
  # Landscape, portrait and square images of many sizes, odd batch tails.
  sizes = [(300, 500), (480, 640), (640, 480), (333, 333), (200, 900),
           (1000, 700), (123, 456)]
  dets = small_predictor.predict(_images(sizes))
  assert small_predictor.num_compiled == 2
  for (h, w), det in zip(sizes, dets):
    assert det.masks.shape[1:] == (h, w)
    assert det.boxes.dtype == np.float32 and det.boxes.shape[1] == 4
    assert np.all(np.diff(det.scores) <= 0)
    assert np.all((det.boxes[:, 0::2] >= 0) & (det.boxes[:, 0::2] <= w))
    assert np.all((det.boxes[:, 1::2] >= 0) & (det.boxes[:, 1::2] <= h))
    assert len(det) <= 100 and len(det.categories) == len(det)
  # More images of the same shapes: no new programs.
  small_predictor.predict(_images(sizes[:3], seed=1))
  assert small_predictor.num_compiled == 2


def test_batch_padding_does_not_change_results(small_predictor):
  images = _images([(300, 500), (310, 520)], seed=3)
  together = small_predictor.predict(images)
  alone = [small_predictor.predict([im])[0] for im in images]
  for a, b in zip(together, alone):
    np.testing.assert_allclose(a.boxes, b.boxes, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_rejects_bad_images(small_predictor):
  with pytest.raises(ValueError, match='uint8'):
    small_predictor(np.zeros((10, 10), np.uint8))
  with pytest.raises(ValueError, match='fits none of the canvases'):
    config = small_predictor.config
    from maskrcnn_jax import preprocess
    preprocess.prepare_image(np.zeros((100, 100, 3), np.uint8), (2000, 2000),
                             config.input.canvases)


def test_half_precision_runs_close_to_float32(fixture_checkpoint):
  config = config_lib.load_config('configs/r50_fpn_1x.py', SMALL_INPUT)
  image = _images([(384, 600)], seed=5)
  ref = predictor_lib.Predictor.from_checkpoint(config, fixture_checkpoint)
  bf16 = predictor_lib.Predictor.from_checkpoint(config, fixture_checkpoint,
                                                 dtype='bfloat16')
  prepared = [ref.prepare(image[0])]
  a = ref.run_device(prepared)
  b = bf16.run_device(prepared)
  assert np.isfinite(b['boxes']).all() and np.isfinite(b['scores']).all()
  # Same top detection class and a nearby score despite ~3 significant bits.
  assert abs(float(a['scores'][0, 0]) - float(b['scores'][0, 0])) < 0.05


def test_data_parallel_over_8_cpu_devices_matches_one(tmp_path,
                                                      fixture_checkpoint):
  script = f'''
import numpy as np, jax
from maskrcnn_jax import config as config_lib, predictor as P
assert jax.device_count() == 8, jax.devices()
config = config_lib.load_config('configs/r50_fpn_1x.py', {SMALL_INPUT!r})
rng = np.random.default_rng(0)
images = [rng.integers(0, 255, size=(300 + 7 * i, 500, 3), dtype=np.uint8)
          for i in range(8)]
sharded = P.Predictor.from_checkpoint(config, {fixture_checkpoint!r},
                                      batch_size=8)
assert sharded.mesh.size == 8
one = P.Predictor.from_checkpoint(config, {fixture_checkpoint!r},
                                  mesh=P.data_mesh(jax.devices()[:1]))
for a, b in zip(sharded.predict(images), one.predict(images)):
  np.testing.assert_allclose(a.boxes, b.boxes, rtol=1e-5, atol=1e-3)
  np.testing.assert_array_equal(a.labels, b.labels)
print('OK')
'''
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             PYTHONPATH=REPO)
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0 and 'OK' in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize('checkpoint_kind', ['pth', 'dir'])
def test_demo_end_to_end(tmp_path, fixture_checkpoint, checkpoint_kind):
  if checkpoint_kind == 'pth':
    ckpt = fixtures.write_pth('r50_fpn', str(tmp_path / 'r50.pth'))
  else:
    ckpt = fixture_checkpoint
  out = tmp_path / 'out'
  cmd = [sys.executable, 'demo.py', '--config', 'configs/r50_fpn_1x.py',
         '--checkpoint', ckpt, '--input', fixtures.image_path('scene_portrait'),
         '--out-dir', str(out), '--score-thr', '0.5']
  for o in SMALL_INPUT:
    cmd.append(f'--config.{o}')
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          timeout=900, env=dict(os.environ, PYTHONPATH=REPO))
  assert result.returncode == 0, result.stderr[-3000:]
  assert (out / 'scene_portrait.png').is_file()
  records = json.loads((out / 'predictions.json').read_text())
  assert len(records) == 100  # all detections, not only those drawn
  for r in records:
    assert r['file_name'] == 'scene_portrait.png'
    assert set(r) == {'file_name', 'bbox', 'score', 'label', 'category',
                      'segmentation'}
    assert r['segmentation']['size'] == [640, 480]
    assert r['category'] == fixtures.coco_classes()[r['label']]


def test_demo_missing_input_is_a_clear_error(tmp_path, fixture_checkpoint):
  from maskrcnn_jax import demo_lib
  with pytest.raises(FileNotFoundError, match='nope.jpg'):
    demo_lib.run_demo('configs/r50_fpn_1x.py', fixture_checkpoint,
                      str(tmp_path / 'nope.jpg'), str(tmp_path / 'o'))
