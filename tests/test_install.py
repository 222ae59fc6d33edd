"""The package as a user installs it: `pip install .` into a fresh venv.

A copy of the repository (what a clean clone holds) is installed, not
editable, into a new virtual environment; its console commands then run
from another directory with torch unimportable: `maskrcnn-convert` on a
`.pth` of each format (zip and legacy), `maskrcnn-demo` on one converted
model and `maskrcnn-eval` on the other, with no `--config` (the converted
directories carry their config).

The venv sees this interpreter's site-packages (`--system-site-packages`)
so nothing is downloaded; `pip install --no-deps --no-index` builds and
installs only maskrcnn_jax itself.
"""

import json
import os
import shutil
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest

from maskrcnn_jax.testing import fixtures as fx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ['--config.input.test_scale=(640, 384)',
         '--config.input.canvases=((384, 640), (640, 384))']


def _copy_clean_tree(dst):
  """The repository files a clone has (no build outputs, caches or .git)."""
  ignore = shutil.ignore_patterns('.git', 'work_dirs', 'build', 'dist',
                                  '*.egg-info', '__pycache__', '.venv*',
                                  '.pytest_cache', 'wip')
  shutil.copytree(REPO, dst, ignore=ignore)


def _write_pth(path, legacy):
  import torch  # pylint: disable=g-import-not-at-top
  sd = OrderedDict((k, torch.from_numpy(np.array(v, order='C')))
                   for k, v in fx.state_dict('r50_fpn').items())
  meta = {'dataset_meta': {'classes': fx.coco_classes()},
          'mmdet_version': '3.3.0'}
  torch.save({'meta': meta, 'state_dict': sd}, str(path),
             _use_new_zipfile_serialization=not legacy)
  return str(path)


@pytest.fixture(scope='module')
def venv(tmp_path_factory):
  """(bin dir, env) of a fresh venv with maskrcnn_jax installed from a copy."""
  root = tmp_path_factory.mktemp('install')
  src = root / 'clone'
  _copy_clean_tree(src)
  env_dir = root / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages',
                  '--without-pip', str(env_dir)], check=True)
  python = env_dir / 'bin' / 'python'
  r = subprocess.run(
      [str(python), '-m', 'pip', 'install', '--no-deps', '--no-index',
       '--no-build-isolation', '-q', str(src)],
      capture_output=True, text=True, cwd=root)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  # torch cannot be imported by anything the commands run.
  blocker = root / 'no_torch' / 'torch'
  blocker.mkdir(parents=True)
  (blocker / '__init__.py').write_text(
      "raise ImportError('torch is blocked in this test')\n")
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env.update(PYTHONPATH=str(root / 'no_torch'), JAX_PLATFORMS='cpu')
  return env_dir / 'bin', env


def _run(bin_dir, command, args, env, cwd):
  r = subprocess.run([str(bin_dir / command), *args], cwd=cwd, env=env,
                     capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, f'{command}: ' + r.stderr[-3000:]
  return r


def test_installed_package_is_the_copy_and_torch_is_blocked(venv):
  bin_dir, env = venv
  code = ('import maskrcnn_jax, importlib.util; print(maskrcnn_jax.__file__);'
          "print(importlib.util.find_spec('maskrcnn_jax.configs.r50_fpn_1x')"
          '.origin)\n'
          'try:\n import torch\nexcept ImportError as e:\n print("blocked", e)')
  r = subprocess.run([str(bin_dir / 'python'), '-c', code], env=env,
                     cwd=bin_dir.parent.parent, capture_output=True,
                     text=True)
  assert r.returncode == 0, r.stderr
  package, config, blocked = r.stdout.strip().splitlines()
  venv_dir = str(bin_dir.parent)
  assert package.startswith(venv_dir) and config.startswith(venv_dir)
  assert not package.startswith(REPO)
  assert blocked.startswith('blocked')


def test_convert_demo_eval_from_another_directory_without_torch(
    venv, tmp_path):
  bin_dir, env = venv
  work = tmp_path / 'elsewhere'
  work.mkdir()
  pths = {'zip': _write_pth(tmp_path / 'r50_zip.pth', legacy=False),
          'legacy': _write_pth(tmp_path / 'r50_legacy.pth', legacy=True)}
  for kind, pth in pths.items():
    r = _run(bin_dir, 'maskrcnn-convert',
             ['--config=r50_fpn_1x', f'--checkpoint={pth}', f'--out={kind}'],
             env, work)
    assert 'check against the model: passed' in r.stdout
  # Demo on the zip-converted model, with the config it stores.
  images = os.path.join(fx.fixtures_dir(), 'train', 'coco', 'images')
  _run(bin_dir, 'maskrcnn-demo',
       ['--checkpoint=zip', f'--input={images}', '--out-dir=demo',
        '--score-thr=0.0'] + SMALL, env, work)
  names = sorted(os.listdir(images))
  predictions = json.loads((work / 'demo' / 'predictions.json').read_text())
  assert sorted({p['file_name'] for p in predictions}) == names
  assert len(list((work / 'demo').glob('*.png'))) == len(names)
  # Eval on the legacy-converted model over the fixtures' COCO set.
  ann = os.path.join(fx.fixtures_dir(), 'train', 'coco', 'annotations.json')
  r = _run(bin_dir, 'maskrcnn-eval',
           ['--checkpoint=legacy', f'--ann={ann}', f'--images={images}',
            '--out-dir=metrics', '--workers=0', '--no-progress'] + SMALL,
           env, work)
  metrics = json.loads((work / 'metrics' / 'metrics.json').read_text())
  assert 'bbox_mAP' in metrics and 'segm_mAP' in metrics
