"""maskrcnn_jax.zoo: the rows, fixture stand-ins, weight resolution."""

import pytest

from maskrcnn_jax import config as config_lib
from maskrcnn_jax import zoo


def test_rows_are_the_21_mmdetection_rows():
  rows = zoo.rows()
  assert len(rows) == 21
  assert len({r.name for r in rows}) == 21
  for r in rows:
    assert r.path == f'configs/{r.name}.py'
    assert r.config.mmdet.url.endswith('/' + r.config.mmdet.checkpoint)
    assert r.config.mmdet.box_ap > r.config.mmdet.mask_ap > 30
  assert 'quickstart' not in {r.name for r in rows}


def test_fixture_arch_matches_architecture_not_recipe():
  by_name = {r.name: zoo.fixture_arch(r.config) for r in zoo.rows()}
  assert by_name['r50_fpn_1x'] == by_name['r50_fpn_mstrain_3x'] == 'r50_fpn'
  assert by_name['r50_fpn_fp16_1x'] == 'r50_fpn'
  assert by_name['r50_caffe_fpn_mstrain_2x'] == 'r50_caffe_fpn'
  assert by_name['x101_32x4d_fpn_2x'] == 'x101_32x4d_fpn'
  assert by_name['x101_32x8d_fpn_1x'] is None
  assert by_name['r101_fpn_1x'] is None
  six = config_lib.load_config('configs/r50_fpn_1x.py', ['model.num_classes=6'])
  assert zoo.fixture_arch(six) is None


def test_resolve_and_get_checkpoint(tmp_path):
  config = config_lib.load_config('configs/x101_64x4d_fpn_1x.py')
  assert zoo.resolve_weights(config, 'auto') == 'zoo'  # no fixture fits
  assert zoo.resolve_weights(config, 'fixture') == 'fixture'
  with pytest.raises(ValueError, match='one of'):
    zoo.resolve_weights(config, 'nope')
  with pytest.raises(ValueError, match='no fixture weights'):
    zoo.get_checkpoint(config, 'fixture', cache_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError):
    zoo.get_checkpoint(config, str(tmp_path / 'missing.pth'))
  given = tmp_path / 'model.pth'
  given.write_bytes(b'')
  assert zoo.get_checkpoint(config, str(given)) == str(given)
  # An existing download is reused (nothing is fetched).
  cached = tmp_path / config.mmdet.checkpoint
  cached.write_bytes(b'x')
  assert zoo.get_checkpoint(config, 'zoo', cache_dir=str(tmp_path)) == str(
      cached)
  if zoo.fixtures_available():
    r50 = config_lib.load_config('configs/r50_fpn_2x.py')
    assert zoo.resolve_weights(r50, 'auto') == 'fixture'
