"""The training loop: device-count invariance, exact resume, multi-process,
non-finite losses and batch-layout errors, on a tiny synthetic set."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from maskrcnn_jax import checkpoint as checkpoint_lib
from maskrcnn_jax import config as config_lib
from maskrcnn_jax.data import synthetic
from tests.conftest import REPO


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('synthetic'))
  # Landscape only: one canvas, so each train.py run traces and compiles
  # one step program, not two (mixed orientations and their batching are
  # tested in test_data_pipeline.py and test_package.py).
  synthetic.generate(root, num_train=40, num_val=4, image_size=128, seed=0,
                     landscape_fraction=1.0)
  return root


def tiny_overrides(root, **extra):
  o = {
      'data.train_ann': f'{root}/annotations/instances_train.json',
      'data.train_images': f'{root}/train',
      'data.val_ann': '',
      # The generator's default six classes (the quick start draws four).
      'model.num_classes': 6,
      # The loop's behaviour does not depend on the backbone: the quick
      # start's narrow R-50 as an R-18 (8 blocks, not 16) traces, compiles
      # and runs in about half the time.
      'model.backbone.depth': 18,
      'model.neck.in_channels': (16, 32, 64, 128),
      'input.test_scale': (128, 96),
      'input.canvases': ((96, 128), (128, 96)),
      'train.scales': ((128, 96),),
      'train.global_batch_size': 4,
      'train.log_every': 1,
      'train.checkpoint_every': 2,
      'train.num_workers': 0,
      'train.warmup_iters': 2,
  }
  o.update(extra)
  return [f'{k}={v}' if isinstance(v, str) else f'{k}={v!r}'
          for k, v in o.items()]


def _run(args, env=None, timeout=900, **kw):
  env = dict(os.environ, PYTHONPATH=REPO, **(env or {}))
  return subprocess.run(args, cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout, **kw)


def _train_cmd(workdir, overrides, max_steps):
  return ([sys.executable, 'train.py', '--config=configs/quickstart.py',
           f'--workdir={workdir}', f'--max_steps={max_steps}'] +
          [f'--config.{o}' for o in overrides])


def _final_params(workdir):
  variables, _ = checkpoint_lib.load_inference_checkpoint(
      os.path.join(workdir, 'final'))
  return variables['params']


def _assert_trees_equal(a, b, rtol=0.0):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol,
                               atol=rtol * 1e-3)


def test_eight_devices_match_one_device(tiny_data):
  script = f'''
import jax, numpy as np
from maskrcnn_jax import config as config_lib
from maskrcnn_jax.models import build
from maskrcnn_jax.train import losses, optim, state as st, train_data
assert jax.device_count() == 8
c = config_lib.load_config('configs/quickstart.py', {tiny_overrides(
    tiny_data, **{'train.global_batch_size': 16})!r})
data = train_data.TrainData(c)
batch = next(data)
model = build.build_model(c)
variables = jax.device_get(build.init_variables(c, jax.random.PRNGKey(0)))
tx, _ = optim.make_optimizer(c, variables['params'], 10)
lcfg = losses.loss_config_from(c, images_per_group=2)
out = []
for devices in (jax.devices(), jax.devices()[:1]):
  mesh = jax.sharding.Mesh(np.asarray(devices), ('data',))
  step = st.make_train_step(model, tx, lcfg, mesh)
  state = st.create_train_state(variables, tx, jax.random.PRNGKey(3),
                                st.LossScale.create(None))
  state, metrics = step(state, st.global_batch_array(batch, mesh))
  out.append((jax.device_get(state.params), jax.device_get(metrics)))
(p8, m8), (p1, m1) = out
for k in ('total_loss', 'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls',
          'loss_bbox', 'loss_mask'):
  np.testing.assert_allclose(m8[k], m1[k], rtol=1e-5, err_msg=k)
for a, b in zip(jax.tree_util.tree_leaves(p8), jax.tree_util.tree_leaves(p1)):
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
print('OK', float(m8['total_loss']))
'''
  r = _run([sys.executable, '-c', script],
           env={'XLA_FLAGS': '--xla_force_host_platform_device_count=8'})
  assert r.returncode == 0 and 'OK' in r.stdout, r.stderr[-4000:]


def test_sigterm_then_resume_equals_uninterrupted(tiny_data, tmp_path):
  overrides = tiny_overrides(tiny_data)
  steps = 6
  straight = tmp_path / 'straight'
  r = _run(_train_cmd(straight, overrides, steps))
  assert r.returncode == 0, r.stderr[-4000:]

  resumed = tmp_path / 'resumed'
  proc = subprocess.Popen(
      _train_cmd(resumed, overrides + ['train.checkpoint_every=100'], steps),
      cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines = []
  for line in proc.stdout:  # wait until a step has run, then SIGTERM
    lines.append(line)
    if line.startswith('step 2 '):
      proc.send_signal(signal.SIGTERM)
      break
  rest, _ = proc.communicate(timeout=600)
  log = ''.join(lines) + rest
  assert proc.returncode == 128 + signal.SIGTERM, log[-4000:]
  saved = sorted(int(s) for s in os.listdir(resumed / 'checkpoints'))
  assert saved and saved[-1] < steps, (saved, log[-2000:])
  assert not (resumed / 'final').exists()
  r = _run(_train_cmd(resumed, overrides, steps))
  assert r.returncode == 0, r.stderr[-4000:]
  assert f'resumed from' in r.stderr
  _assert_trees_equal(_final_params(straight), _final_params(resumed))
  steps_logged = [json.loads(l)['step'] for l in
                  open(resumed / 'metrics.jsonl') if '"loss_cls"' in l]
  assert steps_logged[-1] == steps


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_processes_train_like_one(tiny_data, tmp_path):
  overrides = tiny_overrides(tiny_data)
  single = tmp_path / 'single'
  r = _run(_train_cmd(single, overrides, 3),
           env={'XLA_FLAGS': '--xla_force_host_platform_device_count=2'})
  assert r.returncode == 0, r.stderr[-4000:]
  multi = tmp_path / 'multi'
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=REPO,
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  procs = [subprocess.Popen(
      _train_cmd(multi, overrides, 3) + [
          f'--coordinator_address=localhost:{port}', '--num_processes=2',
          f'--process_id={i}'], cwd=REPO, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=900)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  _assert_trees_equal(_final_params(single), _final_params(multi), rtol=1e-5)


def test_non_finite_loss_stops_naming_the_step(tiny_data, tmp_path):
  r = _run(_train_cmd(tmp_path / 'nan',
                      tiny_overrides(tiny_data, **{'train.base_lr': 1e12}),
                      8))
  assert r.returncode != 0
  assert 'non-finite loss at step' in r.stderr, r.stderr[-3000:]


def test_batch_that_does_not_divide_over_devices_fails_clearly(tiny_data,
                                                               tmp_path):
  r = _run(_train_cmd(tmp_path / 'div',
                      tiny_overrides(tiny_data,
                                     **{'train.global_batch_size': 6}), 1),
           env={'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})
  assert r.returncode != 0
  assert 'global_batch_size=6 does not divide over 4 devices' in r.stderr


def test_config_typo_fails_clearly(tmp_path):
  r = _run([sys.executable, 'train.py', '--config=configs/quickstart.py',
            f'--workdir={tmp_path}', '--config.train.epoch=3'])
  assert r.returncode != 0 and 'epoch' in r.stderr


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_half_precision_train_steps(tiny_data, dtype):
  from maskrcnn_jax.models import build
  from maskrcnn_jax.train import losses, optim
  from maskrcnn_jax.train import state as st
  from maskrcnn_jax.train import train_data
  c = config_lib.load_config('configs/quickstart.py', tiny_overrides(
      tiny_data, **{'model.dtype': dtype}))
  data = train_data.TrainData(c)
  model = build.build_model(c)
  variables = jax.device_get(build.init_variables(c, jax.random.PRNGKey(0)))
  tx, _ = optim.make_optimizer(c, variables['params'], 10)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ('data',))
  step = st.make_train_step(model, tx, losses.loss_config_from(
      c, images_per_group=2), mesh)
  scale = st.LossScale.create('dynamic' if dtype == 'float16' else None)
  state = st.create_train_state(variables, tx, jax.random.PRNGKey(0), scale)
  for _ in range(2):
    state, metrics = step(state, st.global_batch_array(next(data), mesh))
  assert np.isfinite(float(metrics['total_loss']))
  assert jax.tree_util.tree_leaves(state.params)[0].dtype == np.float32
  if dtype == 'float16':
    # Overflowing steps are skipped and halve the scale; finite ones count.
    assert float(state.loss_scale.scale) <= 2.0 ** 16
