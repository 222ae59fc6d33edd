"""Nothing lost, and every bad input a one-line error (issue 12).

Entry points are run as a user would (subprocesses) where the behaviour is
theirs: exit status, one `error:` line, nothing overwritten.
"""

import json
import os
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest

from maskrcnn_jax import checkpoint as checkpoint_lib
from maskrcnn_jax import config as config_lib
from maskrcnn_jax import errors
from maskrcnn_jax import evaluation
from maskrcnn_jax import output_paths
from maskrcnn_jax.data import coco
from maskrcnn_jax.testing import fixtures
from maskrcnn_jax.train import metrics_log
from maskrcnn_jax.train import workdir as workdir_lib
from tests.conftest import REPO, SMALL_INPUT
from tests.test_evaluation import make_coco_set
from tests.test_train import _train_cmd, tiny_data, tiny_overrides  # pylint: disable=unused-import


def _run(args, timeout=600, **kw):
  env = dict(os.environ, PYTHONPATH=REPO)
  env.pop(errors.DEBUG_ENV, None)
  return subprocess.run(args, cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout, **kw)


def _one_error_line(proc, *needles):
  """The run failed with status 2 and exactly one `error:` line, no
  traceback, containing every needle."""
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1, proc.stderr[-3000:]
  for n in needles:
    assert n in lines[0], (n, lines[0])
  return lines[0]


# ---------------------------------------------------------------------------
# errors.main_guard


def test_main_guard_one_line_and_debug(monkeypatch, capsys):
  monkeypatch.delenv(errors.DEBUG_ENV, raising=False)

  def bad_path(argv):
    del argv
    raise FileNotFoundError('config file not found: x.py')

  assert errors.main_guard(bad_path, []) == 2
  assert capsys.readouterr().err == 'error: config file not found: x.py\n'

  def multi_line(argv):
    del argv
    raise ValueError('first\nsecond\nthird')

  assert errors.main_guard(multi_line, []) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: first (+2 more lines') and err.count('\n') == 1

  def no_torch(argv):
    del argv
    raise ModuleNotFoundError("No module named 'torch'", name='torch')

  assert errors.main_guard(no_torch, []) == 2
  assert '`pip install torch`' in capsys.readouterr().err
  with pytest.raises(FileNotFoundError):  # --debug: the traceback
    errors.main_guard(bad_path, ['--debug'])
  monkeypatch.setenv(errors.DEBUG_ENV, '1')
  with pytest.raises(FileNotFoundError):
    errors.main_guard(bad_path, [])
  monkeypatch.delenv(errors.DEBUG_ENV)

  def bug(argv):
    del argv
    raise RuntimeError('a bug keeps its traceback')

  with pytest.raises(RuntimeError):
    errors.main_guard(bug, [])
  seen = []
  assert errors.main_guard(lambda a: seen.append(a) or 3, ['x', '--debug']) == 3
  assert seen == [['x']]


# ---------------------------------------------------------------------------
# train.py command line


def test_train_py_help_and_user_errors(tmp_path):
  r = _run([sys.executable, 'train.py', '--help'])
  assert r.returncode == 0 and '--allow_config_change' in r.stdout, r.stderr
  r = _run([sys.executable, 'train.py', '--config=configs/quickstart.py',
            f'--workdir={tmp_path}', '--config.train.lrr=0.1'])
  _one_error_line(r, 'train.lrr', 'did you mean train.base_lr')
  r = _run([sys.executable, 'train.py', '--config=configs/nope.py'])
  _one_error_line(r, 'config file not found: configs/nope.py')
  blocker = tmp_path / 'file'
  blocker.write_text('')
  r = _run([sys.executable, 'train.py', '--config=configs/quickstart.py',
            f'--workdir={blocker}/sub', '--max_steps=1'])
  _one_error_line(r, 'cannot create the workdir', str(blocker))
  assert 'libtpu' not in r.stderr


# ---------------------------------------------------------------------------
# Workdir lock, config history, metrics.jsonl


def test_workdir_lock_names_holder_and_takes_over_stale(tmp_path):
  wd = str(tmp_path)
  holder = subprocess.Popen(
      [sys.executable, '-c',
       'import sys, time; from maskrcnn_jax.train import workdir as w; '
       f'w.WorkdirLock({wd!r}).acquire(); print("locked", flush=True); '
       'time.sleep(60)'], cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    with pytest.raises(workdir_lib.WorkdirInUseError,
                       match=f'pid {holder.pid}, started'):
      workdir_lib.WorkdirLock(wd).acquire()
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # The killed run left its file: stale, taken over.
  assert os.path.isfile(os.path.join(wd, workdir_lib.LOCK_NAME))
  lock = workdir_lib.WorkdirLock(wd).acquire()
  with open(lock.path) as f:
    assert json.load(f)['pid'] == os.getpid()
  lock.release()
  assert not os.path.exists(lock.path)


def test_resume_config_check(tmp_path):
  wd = str(tmp_path)
  c = config_lib.load_config('configs/quickstart.py')
  workdir_lib.write_config(os.path.join(wd, 'config.json'), c)
  assert workdir_lib.check_resume_config(wd, c, 10) == []
  run_only = config_lib.load_config('configs/quickstart.py',
                                    ['train.log_every=5'])
  assert workdir_lib.check_resume_config(wd, run_only, 10) == [
      'train.log_every']
  assert os.path.isfile(os.path.join(wd, 'config.10.json'))
  schedule = config_lib.load_config('configs/quickstart.py',
                                    ['train.log_every=5', 'train.base_lr=0.1'])
  with pytest.raises(workdir_lib.ConfigChangedError,
                     match='train.base_lr.*--allow_config_change'):
    workdir_lib.check_resume_config(wd, schedule, 20)
  assert workdir_lib.check_resume_config(wd, schedule, 20,
                                         allow_changes=True) == [
                                             'train.base_lr']
  model = config_lib.load_config(
      'configs/quickstart.py',
      ['train.log_every=5', 'train.base_lr=0.1', 'model.roi.fc_channels=64'])
  with pytest.raises(workdir_lib.ConfigChangedError,
                     match=f'model.roi.fc_channels: '
                     f'{c.model.roi.fc_channels} -> 64'):
    workdir_lib.check_resume_config(wd, model, 30, allow_changes=True)
  # config.json stays the first run's; each accepted change is kept.
  with open(os.path.join(wd, 'config.json')) as f:
    assert json.load(f)['train']['log_every'] == c.train.log_every
  assert [s for s, _ in workdir_lib.stored_configs(wd)] == [0, 10, 20]


def test_metrics_jsonl_cut_back_atomically(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  rows = [{'step': s, 'x': s} for s in (1, 2, 3, 4)] + [{'step': 2,
                                                         'val/y': 1}]
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows) + '{"step": 5,')
  assert metrics_log.truncate_jsonl(str(path), 2) == 3
  kept = [json.loads(l) for l in path.read_text().splitlines()]
  assert kept == [rows[0], rows[1], rows[4]]
  assert not (tmp_path / 'metrics.jsonl.tmp').exists()


def test_second_run_locked_out_then_resume_checks_config(tiny_data,
                                                          tmp_path):
  """A live run holds the workdir; after it is killed (-9) the next run
  takes over the stale lock, rejects an unsafe config change before
  compiling, accepts a schedule change with --allow_config_change, and
  metrics.jsonl holds every step once (the killed run's rows after the
  restored step are cut)."""
  wd = tmp_path / 'wd'
  # A small learning rate: the run must not stop (non-finite loss) by itself.
  overrides = tiny_overrides(tiny_data, **{'train.base_lr': 0.002})
  first = subprocess.Popen(
      _train_cmd(wd, overrides, 200), cwd=REPO,
      env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)
  try:
    lines = {}
    for line in first.stdout:  # checkpoint at 2, rows up to 3 logged
      if line.startswith('step '):
        lines[int(line.split()[1])] = line
      if 3 in lines:
        break
    # Throughput and ETA leave out the first step (compilation).
    assert 'img/s' not in lines[1] and 'eta' not in lines[1], lines
    assert 'img/s' in lines[3] and 'eta' in lines[3], lines
    r = _run(_train_cmd(wd, overrides, 200))
    assert first.poll() is None, 'the first run ended by itself'
    _one_error_line(r, 'is in use by another training run',
                    f'pid {first.pid}')
    assert 'compiling' not in r.stderr  # stopped before any work
  finally:
    first.send_signal(signal.SIGKILL)
    first.stdout.close()
    first.wait()
  saved = sorted(int(s) for s in os.listdir(wd / 'checkpoints')
                 if s.isdigit())  # a save cut by the kill is a tmp dir
  assert saved, 'no checkpoint before the kill'
  logged = [json.loads(l)['step'] for l in open(wd / 'metrics.jsonl')
            if '"loss_cls"' in l]
  assert logged[-1] >= saved[-1]
  assert (wd / workdir_lib.LOCK_NAME).exists()  # left by the killed run
  changed = tiny_overrides(tiny_data, **{'train.base_lr': 0.002,
                                         'model.roi.fc_channels': 64})
  r = _run(_train_cmd(wd, changed, saved[-1] + 2))
  fc = config_lib.load_config('configs/quickstart.py').model.roi.fc_channels
  _one_error_line(r, f'model.roi.fc_channels: {fc} -> 64')
  assert 'compiling' not in r.stderr
  # The killed run's lock was taken over (and released on the error).
  assert 'stale lock' in r.stderr and f'pid {first.pid}' in r.stderr
  assert not (wd / workdir_lib.LOCK_NAME).exists()
  schedule = tiny_overrides(tiny_data, **{'train.base_lr': 0.001})
  r = _run(_train_cmd(wd, schedule, saved[-1] + 2))
  _one_error_line(r, 'train.base_lr', '--allow_config_change')
  r = _run(_train_cmd(wd, schedule, saved[-1] + 2) +
           ['--allow_config_change'])
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'libtpu' not in r.stderr
  assert f'resumed from {wd / "checkpoints"} at step {saved[-1]}' in r.stderr
  steps = [json.loads(l)['step'] for l in open(wd / 'metrics.jsonl')
           if '"loss_cls"' in l]
  assert steps == list(range(1, saved[-1] + 3)), steps
  assert (wd / f'config.{saved[-1]}.json').is_file()
  with open(wd / 'config.json') as f:
    assert json.load(f)['train']['base_lr'] == 0.002
  with open(wd / f'config.{saved[-1]}.json') as f:
    assert json.load(f)['train']['base_lr'] == 0.001
  assert not (wd / workdir_lib.LOCK_NAME).exists()


# ---------------------------------------------------------------------------
# Checkpoints of another architecture


def test_checkpoint_of_another_architecture_names_both_configs(
    fixture_checkpoint):
  meta = checkpoint_lib.load_inference_checkpoint(fixture_checkpoint)[1]
  assert meta['architecture']['model.backbone.style'] == 'pytorch'
  caffe = config_lib.load_config('configs/r50_caffe_fpn_1x.py')
  with pytest.raises(checkpoint_lib.CheckpointConfigError) as e:
    checkpoint_lib.load_detector_variables(fixture_checkpoint, caffe)
  msg = str(e.value)
  assert "'r50_fpn_1x'" in msg and "'r50_caffe_fpn_1x'" in msg
  assert "model.backbone.style: checkpoint 'pytorch' vs config 'caffe'" in msg
  r101 = config_lib.load_config('configs/r101_fpn_1x.py')
  with pytest.raises(checkpoint_lib.CheckpointConfigError,
                     match='model.backbone.depth: checkpoint 50 vs config 101'):
    checkpoint_lib.load_detector_variables(fixture_checkpoint, r101)
  # A shape mismatch outside the stored fields: both names, one line first.
  from maskrcnn_jax.models import build  # pylint: disable=g-import-not-at-top
  anchors = config_lib.load_config('configs/r50_fpn_1x.py',
                                   ['model.rpn.anchor_ratios=(0.5, 1.0)'])
  with pytest.raises(ValueError) as e:
    checkpoint_lib.load_detector_variables(
        fixture_checkpoint, anchors,
        expected=build.abstract_variables(anchors))
  first = errors.one_line(str(e.value))
  assert first.startswith(f"{fixture_checkpoint} (saved for config "
                          "'r50_fpn_1x') does not fit the requested config "
                          "'r50_fpn_1x': inference checkpoint does not match")
  assert 'more lines' in first


# ---------------------------------------------------------------------------
# demo.py


def _write_image(path, seed, size=(96, 128)):
  rng = np.random.default_rng(seed)
  cv2.imwrite(str(path), rng.integers(0, 255, size + (3,), np.uint8))


def test_demo_output_names_never_collide():
  names = output_paths.output_names(['d/x.jpg', 'd/x.png', 'd/y.jpg',
                                     'd/x_jpg.png'])
  assert names == ['x_jpg.png', 'x_png.png', 'y.png', 'x_jpg_2.png']
  assert len(set(names)) == len(names)


def test_browse_dataset_never_overwrites(tmp_path):
  from maskrcnn_jax import browse  # pylint: disable=g-import-not-at-top
  ann, image_dir = make_coco_set(str(tmp_path), num_images=2, seed=3)
  before = {f: open(os.path.join(image_dir, f), 'rb').read()
            for f in os.listdir(image_dir)}
  with pytest.raises(errors.UserError, match='would overwrite the input'):
    browse.browse_dataset(ann, image_dir, image_dir, log=lambda _: None)
  assert {f: open(os.path.join(image_dir, f), 'rb').read()
          for f in os.listdir(image_dir)} == before
  # Two images sharing a stem (x.png, x.jpg): two drawings.
  with open(ann) as f:
    data = json.load(f)
  first = data['images'][0]['file_name']
  stem = os.path.splitext(first)[0]
  os.rename(os.path.join(image_dir, data['images'][1]['file_name']),
            os.path.join(image_dir, stem + '.jpg'))
  data['images'][1]['file_name'] = stem + '.jpg'
  with open(ann, 'w') as f:
    json.dump(data, f)
  written = browse.browse_dataset(ann, image_dir, str(tmp_path / 'out'),
                                  log=lambda _: None)
  assert sorted(os.path.basename(w) for w in written) == [
      f'{stem}_jpg.png', f'{stem}_png.png']


def test_demo_refuses_to_overwrite_an_input(tmp_path, fixture_checkpoint):
  _write_image(tmp_path / 'x.png', 0)
  before = (tmp_path / 'x.png').read_bytes()
  r = _run([sys.executable, 'demo.py', '--config', 'configs/r50_fpn_1x.py',
            '--checkpoint', fixture_checkpoint, '--input',
            str(tmp_path / 'x.png'), '--out-dir', str(tmp_path)])
  _one_error_line(r, 'would overwrite the input', 'x.png')
  assert (tmp_path / 'x.png').read_bytes() == before
  r = _run([sys.executable, 'demo.py', '--config', 'configs/r50_fpn_1x.py',
            '--checkpoint', str(tmp_path / 'nope'), '--input',
            str(tmp_path / 'x.png'), '--out-dir', str(tmp_path / 'o')])
  _one_error_line(r, 'checkpoint not found', 'nope')


def test_demo_folder_skips_unreadable_and_keeps_results(tmp_path,
                                                        fixture_checkpoint):
  src = tmp_path / 'in'
  src.mkdir()
  _write_image(src / 'x.jpg', 1)
  _write_image(src / 'x.png', 2)
  (src / 'broken.jpg').write_bytes(b'\xff\xd8 not a jpeg')
  out = tmp_path / 'out'
  cmd = [sys.executable, 'demo.py', '--config', 'configs/r50_fpn_1x.py',
         '--checkpoint', fixture_checkpoint, '--input', str(src),
         '--out-dir', str(out), '--score-thr', '0.5']
  cmd += [f'--config.{o}' for o in SMALL_INPUT]
  r = _run(cmd)
  _one_error_line(r, '1 of 3 images could not be read', 'broken.jpg')
  assert sorted(os.listdir(out)) == ['predictions.json', 'x_jpg.png',
                                     'x_png.png']
  records = json.loads((out / 'predictions.json').read_text())
  assert {r['file_name'] for r in records} == {'x.jpg', 'x.png'}


# ---------------------------------------------------------------------------
# eval.py: annotation validation, unreadable images


def _eval_cmd(ann, images, ckpt, *extra):
  cmd = [sys.executable, 'eval.py', '--config', 'configs/r50_fpn_1x.py',
         '--checkpoint', ckpt, '--ann', ann, '--images', images,
         '--no-progress', '--workers', '0'] + list(extra)
  cmd += [f'--config.{o}' for o in SMALL_INPUT]
  return cmd


@pytest.mark.parametrize('defect', ['duplicate_image_id', 'unknown_image',
                                    'negative_width', 'unknown_category',
                                    'truncated'])
def test_eval_reader_rejects_defects(tmp_path, defect):
  ann, _ = make_coco_set(str(tmp_path), num_images=2, seed=1)
  with open(ann) as f:
    data = json.load(f)
  a0 = data['annotations'][0]
  text = None
  if defect == 'duplicate_image_id':
    data['images'][1]['id'] = data['images'][0]['id']
    needle = f'duplicate image id {data["images"][0]["id"]}'
  elif defect == 'unknown_image':
    a0['image_id'] = 4242
    needle = f'annotation id {a0["id"]} refers to image_id 4242'
  elif defect == 'negative_width':
    a0['bbox'][2] = -3.0
    needle = f'annotation id {a0["id"]}'
  elif defect == 'unknown_category':
    a0['category_id'] = 4242
    needle = 'unknown category_id 4242'
  else:
    text = json.dumps(data)[:-40]
    needle = 'not valid JSON'
  with open(ann, 'w') as f:
    f.write(text if text is not None else json.dumps(data))
  with pytest.raises(coco.CocoFormatError) as e:
    evaluation.load_coco_gt(ann)
  assert ann in str(e.value) and needle in str(e.value), str(e.value)
  assert '\n' not in str(e.value)


def test_eval_py_bad_annotations_and_images_before_the_model(
    tmp_path, fixture_checkpoint):
  ann, image_dir = make_coco_set(str(tmp_path), num_images=3, seed=2)
  with open(ann) as f:
    data = json.load(f)
  dup = dict(data, images=data['images'] + [dict(data['images'][0])])
  bad_ann = str(tmp_path / 'dup.json')
  with open(bad_ann, 'w') as f:
    json.dump(dup, f)
  r = _run(_eval_cmd(bad_ann, image_dir, fixture_checkpoint))
  _one_error_line(r, bad_ann, 'duplicate image id')
  broken = os.path.join(image_dir, data['images'][1]['file_name'])
  with open(broken, 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n truncated')
  r = _run(_eval_cmd(ann, image_dir, fixture_checkpoint))
  _one_error_line(r, '1 of 3 images', os.path.basename(broken),
                  '--skip-bad-images')
  assert 'evaluating' not in r.stdout  # stopped before the model
  # With the flag: scored without it, and said in metrics.json.
  out_dir = str(tmp_path / 'out')
  r = _run(_eval_cmd(ann, image_dir, fixture_checkpoint, '--skip-bad-images',
                     '--metrics', 'bbox', '--out-dir', out_dir))
  assert r.returncode == 0, r.stderr[-3000:]
  with open(os.path.join(out_dir, 'metrics.json')) as f:
    metrics = json.load(f)
  assert metrics['num_skipped_images'] == 1
  assert metrics['skipped_images'][0]['file'] == broken
  with open(os.path.join(out_dir, 'results.bbox.json')) as f:
    ids = {e['image_id'] for e in json.load(f)}
  assert data['images'][1]['id'] not in ids
  assert 'skipping 1 unreadable images' in r.stdout + r.stderr


def test_missing_optional_dependency_gives_install_command(
    tmp_path, monkeypatch, capsys):
  from tools import analyze_logs  # pylint: disable=g-import-not-at-top
  log = tmp_path / 'metrics.jsonl'
  log.write_text('{"step": 1, "total_loss": 1.0}\n')
  monkeypatch.delenv(errors.DEBUG_ENV, raising=False)
  monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import fails
  rc = errors.main_guard(analyze_logs.main,
                         ['plot_curve', str(log), '--out',
                          str(tmp_path / 'c.png')])
  err = capsys.readouterr().err
  assert rc == 2, err
  assert err == ("error: missing optional dependency 'matplotlib': install "
                 'it with `pip install matplotlib` (see requirements.txt '
                 'for the tested version)\n')


def test_tools_and_converter_print_one_line(tmp_path):
  r = _run([sys.executable, '-m', 'maskrcnn_jax.convert', '--config',
            'configs/r50_fpn_1x.py', '--checkpoint', str(tmp_path / 'no.pth'),
            '--out', str(tmp_path / 'o')])
  _one_error_line(r, 'no.pth')
  r = _run([sys.executable, '-m', 'tools.browse_dataset', '--config',
            'configs/nope.py', '--out-dir', str(tmp_path / 'b')])
  assert r.returncode != 0 and 'Traceback' not in r.stderr, r.stderr[-2000:]
  r = _run([sys.executable, '-m', 'tools.loss_report', '--config',
            'r50_fpn_1x', '--checkpoint', str(tmp_path / 'x'),
            '--ann', 'a.json', '--images', 'i', '--config.train.lrr=1'])
  _one_error_line(r, 'train.lrr')
