"""The package as a user meets it: configs by row name, one override syntax,
typed model defaults that agree with the config, the config stored in the
checkpoints, `Predictor.from_pretrained` and the commands run from another
directory."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from maskrcnn_jax import config as config_lib
from maskrcnn_jax.models import build
from maskrcnn_jax.models import model_config
from tests.conftest import REPO, SMALL_INPUT


def test_model_defaults_agree_with_base_config():
  """One source of defaults: the typed model settings are the config keys
  under model.*, with the same default values."""
  base = config_lib.config_from_dict(
      config_lib.config_to_dict(config_lib.base_config()))
  defaults = dataclasses.asdict(model_config.ModelConfig())
  assert config_lib._tuples(base.model.to_dict()) == config_lib._tuples(
      defaults)
  assert build.model_config(base) == model_config.ModelConfig()
  model = build.build_model(base)
  assert model.roi_align_chunk == base.model.roi.roi_align_chunk == 16


def test_target_defaults_resolve_from_environment(monkeypatch):
  """'auto' strategies and train dtype follow MASKRCNN_JAX_TARGET (else the
  backend, CPU here); explicit config values win on every target."""
  from maskrcnn_jax import target as target_lib
  base = config_lib.base_config()
  model = build.build_model(base)
  monkeypatch.delenv(target_lib.ENV, raising=False)
  assert (model.roi_align_strategy, model.nms_algorithm,
          build.train_dtype(base)) == ('chunked', 'tiled', 'float32')
  for target in ('gpu', 'tpu'):
    monkeypatch.setenv(target_lib.ENV, target)
    assert (model.roi_align_strategy, model.nms_algorithm,
            build.train_dtype(base)) == ('tiered', 'dense', 'bfloat16')
  fixed = config_lib.load_config('r50_fpn_1x', [
      'model.roi.roi_align_strategy=chunked', 'model.nms_strategy=tiled',
      'model.train_dtype=float32'])
  fixed_model = build.build_model(fixed)
  assert (fixed_model.roi_align_strategy, fixed_model.nms_algorithm,
          build.train_dtype(fixed)) == ('chunked', 'tiled', 'float32')
  half = config_lib.load_config('r50_fpn_1x', ['model.dtype=float16'])
  assert build.train_dtype(half) == 'float16'   # only float32 goes bf16
  monkeypatch.setenv(target_lib.ENV, 'cuda')
  with pytest.raises(ValueError, match='MASKRCNN_JAX_TARGET'):
    target_lib.current()


def test_cpu_xla_flags_added_unless_given(monkeypatch):
  from maskrcnn_jax import target as target_lib
  flag = '--xla_cpu_experimental_ynn_fusion_type='
  monkeypatch.delenv(target_lib.XLA_FLAGS_ENV, raising=False)
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  assert target_lib.set_cpu_xla_flags()
  assert os.environ['XLA_FLAGS'] == (
      '--xla_force_host_platform_device_count=2 ' + flag)
  assert not target_lib.set_cpu_xla_flags()  # idempotent
  # A value the user gives wins; the opt-out leaves XLA_FLAGS alone.
  user = '--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT'
  monkeypatch.setenv('XLA_FLAGS', user)
  assert not target_lib.set_cpu_xla_flags()
  assert os.environ['XLA_FLAGS'] == user
  monkeypatch.delenv('XLA_FLAGS')
  monkeypatch.setenv(target_lib.XLA_FLAGS_ENV, '0')
  assert not target_lib.set_cpu_xla_flags()
  assert 'XLA_FLAGS' not in os.environ


_CONV_KIND = """if True:
  import sys
  import jax, jax.numpy as jnp
  if sys.argv[1] == '1':
    import maskrcnn_jax
  conv = jax.jit(jax.grad(lambda x, w: jnp.sum(jax.lax.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))),
      argnums=1))
  x, w = jnp.ones((4, 48, 64, 64)), jnp.ones((3, 3, 64, 64))
  text = conv.lower(x, w).compile().as_text()
  print('ynn' if '__ynn_fusion' in text else 'xla')
"""


def test_import_compiles_convolutions_without_ynn_fusions():
  """In a fresh process, importing the package before the first
  computation is enough: XLA:CPU then emits its own convolution (the
  YNNPACK fusion otherwise chosen is what target.CPU_XLA_FLAGS avoids)."""
  env = {k: v for k, v in os.environ.items()
         if k not in ('XLA_FLAGS', 'MASKRCNN_JAX_CPU_XLA_FLAGS')}
  kinds = [subprocess.run([sys.executable, '-c', _CONV_KIND, arg], env=env,
                          capture_output=True, text=True, check=True,
                          cwd=REPO).stdout.split()[-1] for arg in '01']
  assert kinds == ['ynn', 'xla']


def test_model_config_rejects_unknown_keys_and_types():
  model = config_lib.base_config().model.to_dict()
  model['roi']['roi_align_chnk'] = 8
  with pytest.raises(ValueError, match='model.roi.roi_align_chnk'):
    model_config.from_config(model_config.ModelConfig, model)
  model = config_lib.base_config().model.to_dict()
  model['backbone']['depth'] = '50'
  with pytest.raises(ValueError, match='model.backbone.depth'):
    model_config.from_config(model_config.ModelConfig, model)
  model = config_lib.base_config().model.to_dict()
  model['neck']['in_channels'] = [64, 128, 256, 512]   # JSON lists: tuples
  assert model_config.from_config(model_config.ModelConfig, model).neck == (
      model_config.NeckConfig(in_channels=(64, 128, 256, 512)))


def test_config_by_row_name_and_path(tmp_path, monkeypatch):
  by_name = config_lib.load_config('r101_fpn_2x')
  by_path = config_lib.load_config(os.path.join(REPO, 'configs',
                                                'r101_fpn_2x.py'))
  assert by_name.to_dict() == by_path.to_dict()
  assert 'r50_fpn_1x' in config_lib.config_names()
  monkeypatch.chdir(tmp_path)   # README's configs/<row>.py, elsewhere
  assert config_lib.resolve_config_path('configs/r101_fpn_2x.py') == (
      os.path.join(config_lib.configs_dir(), 'r101_fpn_2x.py'))
  assert config_lib.load_config('r101_fpn_2x').name == 'r101_fpn_2x'
  with pytest.raises(FileNotFoundError):
    config_lib.load_config('elsewhere/r101_fpn_2x.py')
  with pytest.raises(FileNotFoundError, match='r50_fpn_1x'):
    config_lib.load_config('r50_fpn_1xx')


def test_split_config_flags():
  rest, overrides = config_lib.split_config_flags(
      ['--checkpoint', 'x', '--config.test.score_thr=0.1', '--config',
       'r50_fpn_1x', '--config.model.num_classes', '3'])
  assert rest == ['--checkpoint', 'x', '--config', 'r50_fpn_1x']
  assert overrides == ['test.score_thr=0.1', 'model.num_classes=3']


def test_model_arguments_shared_by_the_commands():
  """demo/eval/convert/loss_report parse --config/--checkpoint/--dtype and
  the overrides alike: --config.a.b=v flags, then the deprecated alias."""
  import argparse
  from maskrcnn_jax.cli import demo as demo_cli
  from maskrcnn_jax.cli import eval as eval_cli
  p = argparse.ArgumentParser()
  config_lib.add_model_arguments(p, dtype=True)
  args, overrides = config_lib.parse_config_args(p, [
      '--checkpoint', 'ck', '--config.test.score_thr=0.1',
      '--config-override', 'model.num_classes=3', '--dtype', 'bfloat16'])
  assert (args.config, args.checkpoint, args.dtype) == (None, 'ck',
                                                       'bfloat16')
  assert overrides == ['test.score_thr=0.1', 'model.num_classes=3']
  for parse in (demo_cli.parse_args, eval_cli.parse_args):
    extra = ['--input', 'i', '--out-dir', 'o'] if parse is demo_cli.parse_args else []
    args, overrides = parse(['--checkpoint', 'ck', '--config', 'r50_fpn_1x',
                             '--config.test.score_thr', '0.2'] + extra)
    assert (args.config, args.checkpoint) == ('r50_fpn_1x', 'ck')
    assert overrides == ['test.score_thr=0.2']
  strict = argparse.ArgumentParser()
  config_lib.add_model_arguments(strict, config_required=True)
  with pytest.raises(SystemExit):
    config_lib.parse_config_args(strict, ['--checkpoint', 'ck'])


def test_config_dict_round_trip():
  c = config_lib.load_config('quickstart', ['model.num_classes=3'])
  back = config_lib.config_from_dict(config_lib.config_to_dict(c))
  assert back.to_dict() == c.to_dict()
  assert isinstance(back.input.canvases[0], tuple)
  with pytest.raises(AttributeError):
    back.new_key = 1  # locked


def test_from_pretrained_prefilled_cache_no_network(tmp_path, monkeypatch):
  """A row name: its .pth (already in the cache) is converted once, then
  the converted directory loads with its stored config; no network."""
  from maskrcnn_jax import predictor as predictor_lib
  from maskrcnn_jax import zoo
  from maskrcnn_jax.testing import fixtures
  import urllib.request

  def no_network(*args, **kwargs):
    raise AssertionError('network access')

  monkeypatch.setattr(urllib.request, 'urlopen', no_network)
  config = config_lib.load_config('r50_fpn_1x')
  cache = tmp_path / 'cache'
  cache.mkdir()
  fixtures.write_pth('r50_fpn', str(cache / config.mmdet.checkpoint))
  p = predictor_lib.Predictor.from_pretrained('r50_fpn_1x',
                                              cache_dir=str(cache))
  converted = cache / 'converted' / 'r50_fpn_1x'
  assert os.path.isdir(converted)
  assert p.config.name == 'r50_fpn_1x' and len(p.class_names) == 80
  stamp = os.path.getmtime(converted)
  os.remove(cache / config.mmdet.checkpoint)   # no longer needed
  again = predictor_lib.Predictor.from_pretrained('r50_fpn_1x',
                                                  cache_dir=str(cache))
  assert os.path.getmtime(converted) == stamp
  a = p.variables['params']['backbone']['conv1']['kernel']
  b = again.variables['params']['backbone']['conv1']['kernel']
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # A directory works the same; a wrong name says what exists.
  d = predictor_lib.Predictor.from_pretrained(str(converted))
  assert d.class_names == p.class_names
  with pytest.raises(FileNotFoundError, match='r50_fpn_1x'):
    predictor_lib.Predictor.from_pretrained('r50_fpn_9x',
                                            cache_dir=str(cache))
  del zoo


def _run_elsewhere(args, cwd, timeout=900):
  """`python -m maskrcnn_jax ...` with cwd outside the repository (the
  package found through PYTHONPATH as an installed one would be)."""
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'maskrcnn_jax', *args],
                        cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=timeout)


def test_finetuned_checkpoint_evaluates_and_demos_with_no_overrides(
    tmp_path):
  """A quick-start-like run (other class count, scales and canvases) from
  another directory; its final checkpoint then evaluates and demos with no
  --config and no overrides: the stored config carries them."""
  from maskrcnn_jax import checkpoint as checkpoint_lib
  from maskrcnn_jax.data import synthetic
  data = tmp_path / 'data'
  synthetic.generate(str(data), num_train=8, num_val=2, image_size=128,
                     seed=0)
  workdir = tmp_path / 'run'
  o = {
      'data.train_ann': f'{data}/annotations/instances_train.json',
      'data.train_images': f'{data}/train',
      'data.val_ann': f'{data}/annotations/instances_val.json',
      'data.val_images': f'{data}/val',
      'model.num_classes': 6,  # the generator's default classes
      'model.backbone.depth': 18,  # another backbone, carried too
      'model.neck.in_channels': (16, 32, 64, 128),
      'input.test_scale': (128, 96),
      'input.canvases': ((96, 128), (128, 96)),
      'train.scales': ((128, 96),),
      'train.global_batch_size': 2,
      'train.num_workers': 0,
      'train.warmup_iters': 1,
      'test.score_thr': 0.0,
  }
  flags = [f'--config.{k}={v}' if isinstance(v, str) else
           f'--config.{k}={v!r}' for k, v in o.items()]
  r = _run_elsewhere(['train', '--config=quickstart', f'--workdir={workdir}',
                      '--max_steps=1'] + flags, cwd=tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  final = str(workdir / 'final')
  stored = checkpoint_lib.load_checkpoint_config(final)
  assert tuple(stored.input.canvases) == ((96, 128), (128, 96))
  assert stored.test.score_thr == 0.0
  assert stored.model.backbone.depth == 18
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  r = _run_elsewhere(['eval', '--checkpoint', final, '--out-dir', 'metrics',
                      '--workers', '0', '--no-progress'], cwd=elsewhere)
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'bbox_mAP' in r.stdout
  assert (elsewhere / 'metrics' / 'metrics.json').is_file()
  r = _run_elsewhere(['demo', '--checkpoint', final, '--input',
                      str(data / 'val'), '--out-dir', 'demo'], cwd=elsewhere)
  assert r.returncode == 0, r.stderr[-3000:]
  assert len(list((elsewhere / 'demo').glob('*.png'))) == 2
  # A .pth needs --config; the error says so in one line.
  r = _run_elsewhere(['eval', '--checkpoint', str(data / 'no.pth')],
                     cwd=elsewhere)
  assert r.returncode == 2 and 'no.pth' in r.stderr
