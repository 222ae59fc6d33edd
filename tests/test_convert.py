"""Checkpoint reading and MMDetection -> Flax conversion (maskrcnn_jax.convert).

Checkpoints are built from the fixture manifests with make_weights.py (real
MMDetection-layout `.pth` files), in pytest's tmp dirs.
"""

import importlib.util
import os
import pickle
import subprocess
import sys
import types
from collections import OrderedDict

import jax
import numpy as np
import pytest

from maskrcnn_jax import checkpoint as ckpt_lib
from maskrcnn_jax.config import base_config, load_config, set_backbone
from maskrcnn_jax.cli import convert as cli
from maskrcnn_jax.convert import converter
from maskrcnn_jax.convert import mmdet
from maskrcnn_jax.convert import pth
from maskrcnn_jax.data.coco_classes import COCO_CLASSES
from maskrcnn_jax.testing import fixtures as fx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:
  fx.fixtures_dir()
  HAVE_FIXTURES = True
except FileNotFoundError:
  HAVE_FIXTURES = False
pytestmark = pytest.mark.skipif(not HAVE_FIXTURES,
                                reason='reference fixtures not found')
HAVE_BUILD = importlib.util.find_spec('maskrcnn_jax.models.build') is not None

R50_PARAMS = 44_396_336  # spec A.1: learnable values of R-50


def _torch():
  import torch  # pylint: disable=g-import-not-at-top
  return torch


def _save_pth(path, state, meta=None, legacy=True, bare=False):
  torch = _torch()
  # (np.ascontiguousarray would turn 0-d arrays into shape (1,).)
  sd = OrderedDict((k, torch.from_numpy(np.array(v, order='C')))
                   for k, v in state.items())
  obj = sd if bare else {'meta': meta if meta is not None else {},
                         'state_dict': sd}
  torch.save(obj, str(path), _use_new_zipfile_serialization=not legacy)
  return str(path)


def _shape_tree(variables):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype),
                      variables)


def _r50_config():
  return load_config(os.path.join(REPO, 'configs', 'r50_fpn_1x.py'))


def _x101_config():
  path = os.path.join(REPO, 'configs', 'x101_32x4d_fpn_1x.py')
  if os.path.isfile(path):
    return load_config(path)
  return set_backbone(base_config(), depth=101, groups=32, base_width=4)


def _sub_manifest(arch, keep):
  m = dict(fx.manifest(arch))
  m['keys'] = [k for k in m['keys'] if keep(k[0])]
  return m


# --------------------------------------------------------------------------
# Shared fixtures (module scope: built once).
# --------------------------------------------------------------------------


@pytest.fixture(scope='module')
def r50_state():
  return fx.state_dict('r50_fpn')


@pytest.fixture(scope='module')
def r50_config():
  return _r50_config()


@pytest.fixture(scope='module')
def r50_variables(r50_state, r50_config):
  return mmdet.state_dict_to_variables(r50_state, r50_config)


@pytest.fixture(scope='module')
def r50_expected(r50_config, r50_variables):
  """The model's abstract variables (from build.py when it exists)."""
  if HAVE_BUILD:
    from maskrcnn_jax.models.build import abstract_variables  # pylint: disable=g-import-not-at-top
    return abstract_variables(r50_config)
  return _shape_tree(r50_variables)


@pytest.fixture(scope='module')
def r50_pth(tmp_path_factory):
  """make_weights.py's own .pth (torch.save default: zip format)."""
  path = tmp_path_factory.mktemp('r50') / 'r50_zip.pth'
  return fx.write_pth('r50_fpn', str(path))


@pytest.fixture(scope='module')
def r50_pth_legacy(tmp_path_factory, r50_state):
  """As MMDetection publishes: legacy (non-zip) format."""
  path = tmp_path_factory.mktemp('r50') / 'r50_legacy.pth'
  meta = {'dataset_meta': {'classes': fx.coco_classes()},
          'mmdet_version': '3.3.0'}
  return _save_pth(path, r50_state, meta, legacy=True)


# --------------------------------------------------------------------------
# read_pth
# --------------------------------------------------------------------------


@pytest.mark.parametrize('which', ['zip', 'legacy'])
def test_read_pth_equals_make_weights(which, r50_state, r50_pth,
                                      r50_pth_legacy):
  path = r50_pth if which == 'zip' else r50_pth_legacy
  with open(path, 'rb') as f:
    head = f.read(4)
  assert (head == b'PK\x03\x04') == (which == 'zip')
  state, meta = pth.read_pth(path)
  assert list(state) == list(r50_state)
  for k, v in r50_state.items():
    assert state[k].dtype == v.dtype, k
    if which == 'zip' and k.endswith('num_batches_tracked'):
      # make_weights.py saves np.ascontiguousarray(0-d) = shape (1,).
      assert state[k].shape in ((), (1,)), k
    else:
      assert state[k].shape == v.shape, k
    np.testing.assert_array_equal(state[k], v, err_msg=k)
  assert tuple(meta['dataset_meta']['classes']) == COCO_CLASSES
  assert meta['mmdet_version'] == '3.3.0'


def test_read_pth_bare_state_dict_module_prefix_and_fp16(tmp_path):
  state = OrderedDict([
      ('module.a.weight', np.arange(6, dtype=np.float16).reshape(2, 3)),
      ('module.a.bias', np.ones(2, np.float32)),
      ('b.num_batches_tracked', np.array(3, np.int64)),
  ])
  for legacy in (True, False):
    path = _save_pth(tmp_path / f'bare{legacy}.pth', state, legacy=legacy,
                     bare=True)
    got, meta = pth.read_pth(path)
    assert meta == {}
    assert list(got) == ['a.weight', 'a.bias', 'b.num_batches_tracked']
    assert got['a.weight'].dtype == np.float16
    np.testing.assert_array_equal(got['a.weight'], state['module.a.weight'])
    assert got['b.num_batches_tracked'] == 3
  # fp16 is cast up by the conversion.
  variables = mmdet.state_dict_to_variables(got, base_config())
  assert variables['params']['a']['kernel'].dtype == np.float32
  np.testing.assert_array_equal(variables['params']['a']['kernel'],
                                state['module.a.weight'].astype(np.float32).T)


class _FakeHistoryBuffer:
  """Pickled as mmengine.logging.history_buffer.HistoryBuffer."""

  def __init__(self):
    self._log_history = np.array([0.1, 0.2])
    self._count_history = np.array([1, 1])
    self.max_length = 1000000


def test_read_pth_with_mmengine_objects_in_meta(tmp_path):
  # Register a fake mmengine module only while saving: loading must neither
  # need nor import it.
  names = ['mmengine', 'mmengine.logging', 'mmengine.logging.history_buffer']
  saved = {n: sys.modules.get(n) for n in names}
  mod = types.ModuleType(names[-1])
  _FakeHistoryBuffer.__module__ = names[-1]
  _FakeHistoryBuffer.__qualname__ = _FakeHistoryBuffer.__name__ = (
      'HistoryBuffer')
  mod.HistoryBuffer = _FakeHistoryBuffer
  state = OrderedDict([('x.weight', np.ones((2, 2), np.float32))])
  meta = {'mmengine_version': '0.10.3', 'epoch': np.int64(12),
          'lr': np.float64(0.02), 'arr': np.arange(3, dtype=np.float32),
          'message_hub': {'log_scalars': {'train/lr': _FakeHistoryBuffer()}},
          'dataset_meta': {'classes': ('a', 'b'),
                           'palette': [(1, 2, 3), (4, 5, 6)]}}
  try:
    for n in names:
      sys.modules[n] = types.ModuleType(n)
    sys.modules[names[-1]] = mod
    paths = [_save_pth(tmp_path / f'mm{legacy}.pth', state, meta,
                       legacy=legacy) for legacy in (True, False)]
  finally:
    for n, m in saved.items():
      if m is None:
        sys.modules.pop(n, None)
      else:
        sys.modules[n] = m
  for path in paths:
    got, meta2 = pth.read_pth(path)
    np.testing.assert_array_equal(got['x.weight'], state['x.weight'])
    buf = meta2['message_hub']['log_scalars']['train/lr']
    assert isinstance(buf, pth.UnpickledPlaceholder)
    assert type(buf).qualified_name() == (
        'mmengine.logging.history_buffer.HistoryBuffer')
    state_dict = buf.pickle_state
    np.testing.assert_array_equal(state_dict['_log_history'], [0.1, 0.2])
    assert meta2['epoch'] == 12 and meta2['lr'] == 0.02
    np.testing.assert_array_equal(meta2['arr'], [0, 1, 2])
    assert mmdet.class_names_from_meta(meta2, 2) == ('a', 'b')
  assert 'mmengine' not in sys.modules


class _Evil:

  def __init__(self, cmd):
    self.cmd = cmd

  def __reduce__(self):
    return (os.system, (self.cmd,))


def test_malicious_pickle_is_not_executed(tmp_path):
  marker = tmp_path / 'pwned'
  cmd = f'touch {marker}'
  state = OrderedDict([('x.weight', np.ones((2, 2), np.float32))])
  # Inside the meta of a real torch checkpoint (both formats).
  for legacy in (True, False):
    path = _save_pth(tmp_path / f'evil{legacy}.pth', state,
                     {'evil': _Evil(cmd)}, legacy=legacy)
    got, meta = pth.read_pth(path)
    assert not marker.exists()
    assert isinstance(meta['evil'], pth.UnpickledPlaceholder)
    assert meta['evil'].pickle_args == (cmd,)
    np.testing.assert_array_equal(got['x.weight'], state['x.weight'])
  # A plain pickle that is no torch file at all.
  plain = tmp_path / 'evil.pkl'
  plain.write_bytes(pickle.dumps({'state_dict': _Evil(cmd)}, protocol=2))
  with pytest.raises(pth.CheckpointFormatError, match=str(plain)):
    pth.read_pth(plain)
  assert not marker.exists()
  # The restricted unpickler alone, with other dangerous globals.
  for payload in [pickle.dumps(_Evil(cmd)),
                  b'cbuiltins\neval\n(Vopen(%r, "w")\ntR.' % str(marker)
                  .encode(),
                  b'cbuiltins\n__import__\n(Vos\ntR.']:
    obj = pth.restricted_loads(payload)
    assert isinstance(obj, pth.UnpickledPlaceholder)
  assert not marker.exists()


def test_read_pth_errors(tmp_path):
  missing = tmp_path / 'nope.pth'
  with pytest.raises(FileNotFoundError, match=str(missing)):
    pth.read_pth(missing)
  text = tmp_path / 'notes.pth'
  text.write_text('this is not a checkpoint\n')
  with pytest.raises(pth.CheckpointFormatError, match=str(text)):
    pth.read_pth(text)
  with pytest.raises(pth.CheckpointFormatError, match=str(tmp_path)):
    pth.read_pth(tmp_path)
  notsd = tmp_path / 'list.pth'
  _torch().save([1, 2, 3], str(notsd))
  with pytest.raises(pth.CheckpointFormatError, match='state dict'):
    pth.read_pth(notsd)


# --------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------


def test_r50_conversion_layouts_and_round_trip(r50_state, r50_config,
                                               r50_variables, r50_expected):
  v = r50_variables
  assert set(v) == {'params', 'batch_stats'}
  p, s = v['params'], v['batch_stats']
  w = r50_state['backbone.conv1.weight']
  np.testing.assert_array_equal(p['backbone']['conv1']['kernel'],
                                w.transpose(2, 3, 1, 0))
  bn = 'backbone.layer1.0.downsample.1'
  np.testing.assert_array_equal(
      p['backbone']['layer1']['0']['downsample']['1']['scale'],
      r50_state[f'{bn}.weight'])
  np.testing.assert_array_equal(
      s['backbone']['layer1']['0']['downsample']['1']['var'],
      r50_state[f'{bn}.running_var'])
  np.testing.assert_array_equal(
      p['neck']['lateral_convs']['0']['conv']['bias'],
      r50_state['neck.lateral_convs.0.conv.bias'])
  np.testing.assert_array_equal(
      p['roi_head']['bbox_head']['fc_cls']['kernel'],
      r50_state['roi_head.bbox_head.fc_cls.weight'].T)
  assert p['roi_head']['mask_head']['upsample']['kernel'].shape == (
      256, 2, 2, 256)
  assert p['roi_head']['bbox_head']['shared_fcs']['0']['kernel'].shape == (
      7 * 7 * 256, 1024)
  leaves = mmdet.flatten_variables(v)
  assert all(a.dtype == np.float32 for a in leaves.values())
  assert not any('num_batches_tracked' in '/'.join(k) for k in leaves)
  assert mmdet.count_parameters(v) == R50_PARAMS
  # Strict conversion against the model's variables passes.
  mmdet.state_dict_to_variables(r50_state, r50_config, r50_expected)
  # Round trip: same keys, order, dtypes and values.
  back = mmdet.variables_to_state_dict(v, r50_config)
  assert list(back) == list(r50_state)
  for k, a in r50_state.items():
    assert back[k].dtype == a.dtype, k
    np.testing.assert_array_equal(back[k], a, err_msg=k)
  # ... also from a sorted tree (as jax/orbax return it).
  back2 = mmdet.variables_to_state_dict(jax.tree.map(np.asarray, v),
                                        r50_config)
  assert set(back2) == set(r50_state)


def test_x101_grouped_round_trip_and_model_match():
  cfg = _x101_config()
  full = fx.manifest('x101_32x4d_fpn')
  state = fx._make_weights_module().build(full)  # pylint: disable=protected-access
  v = mmdet.state_dict_to_variables(state, cfg)
  k = v['params']['backbone']['layer1']['0']['conv2']['kernel']
  assert k.shape == (3, 3, 4, 128)
  back = mmdet.variables_to_state_dict(v, cfg)
  assert list(back) == list(state)
  for key, a in state.items():
    np.testing.assert_array_equal(back[key], a, err_msg=key)
  if HAVE_BUILD:
    from maskrcnn_jax.models.build import abstract_variables  # pylint: disable=g-import-not-at-top
    mmdet.state_dict_to_variables(state, cfg, abstract_variables(cfg))


def test_shared_fcs0_permutation_matches_torch_linear(r50_state,
                                                      r50_variables):
  torch = _torch()
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  w = r50_state['roi_head.bbox_head.shared_fcs.0.weight']
  b = r50_state['roi_head.bbox_head.shared_fcs.0.bias']
  x = np.random.default_rng(0).normal(size=(3, 256, 7, 7)).astype(np.float32)
  ref = torch.nn.functional.linear(torch.from_numpy(x).flatten(1),
                                   torch.from_numpy(w),
                                   torch.from_numpy(b)).numpy()
  fc = r50_variables['params']['roi_head']['bbox_head']['shared_fcs']['0']
  x_nhwc = x.transpose(0, 2, 3, 1).reshape(3, -1)
  with jax.default_matmul_precision('highest'):
    got = nn.Dense(1024).apply({'params': fc}, x_nhwc)
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-4)
  # A plain transpose (no permutation) would be wrong.
  wrong = x_nhwc @ w.T + b
  assert np.abs(wrong - ref).max() > 1e-2


def test_upsample_layout_matches_conv_transpose2d(r50_state, r50_variables):
  torch = _torch()
  w = r50_state['roi_head.mask_head.upsample.weight']
  b = r50_state['roi_head.mask_head.upsample.bias']
  x = np.random.default_rng(1).normal(size=(2, 256, 5, 4)).astype(np.float32)
  ref = torch.nn.functional.conv_transpose2d(
      torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
      stride=2).numpy().transpose(0, 2, 3, 1)
  up = r50_variables['params']['roi_head']['mask_head']['upsample']
  kern, bias = up['kernel'], up['bias']             # (in, 2, 2, out)
  x_nhwc = x.transpose(0, 2, 3, 1)
  # y[n, 2i+a, 2j+b, o] = sum_c x[n, i, j, c] * K[c, a, b, o] + bias[o]
  y = np.einsum('nijc,cabo->niajbo', x_nhwc, kern)
  n, h, _, wd, _, o = y.shape
  y = y.reshape(n, 2 * h, 2 * wd, o) + bias
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('key,stride', [
    ('backbone.layer2.0.conv2.weight', 2),   # [256, 8, 3, 3], 32 groups
    ('backbone.layer1.1.conv2.weight', 1),   # [128, 4, 3, 3]
])
def test_grouped_conv_matches_torch(key, stride):
  torch = _torch()
  m = _sub_manifest('x101_32x4d_fpn', lambda k: k == key)
  state = fx._make_weights_module().build(m)  # pylint: disable=protected-access
  w = state[key]
  groups = 32
  cin = w.shape[1] * groups
  x = np.random.default_rng(2).normal(size=(2, cin, 9, 10)).astype(np.float32)
  ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                   stride=stride, padding=1,
                                   groups=groups).numpy().transpose(0, 2, 3, 1)
  v = mmdet.state_dict_to_variables(state, _x101_config())
  node = v['params']
  for part in key.split('.')[:-1]:
    node = node[part]
  got = jax.lax.conv_general_dilated(
      x.transpose(0, 2, 3, 1), node['kernel'], (stride, stride),
      ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=groups, precision=jax.lax.Precision.HIGHEST)
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-4)


def test_mismatch_error_lists_everything(r50_state, r50_config, r50_expected,
                                         capsys):
  bad = OrderedDict(r50_state)
  del bad['roi_head.mask_head.conv_logits.bias']
  del bad['backbone.layer1.0.bn1.running_var']
  bad['roi_head.bbox_head.extra_fc.weight'] = np.zeros((4, 4), np.float32)
  bad['foo.bar'] = np.zeros((3,), np.float32)
  bad['roi_head.bbox_head.fc_cls.weight'] = np.zeros((11, 1024), np.float32)
  bad['roi_head.bbox_head.shared_fcs.0.weight'] = np.zeros((1024, 100),
                                                           np.float32)
  bad['backbone.conv1.weight'] = np.zeros((64, 3, 3, 3), np.float32)
  with pytest.raises(mmdet.CheckpointMismatchError) as info:
    mmdet.state_dict_to_variables(bad, r50_config, r50_expected)
  e, msg = info.value, str(info.value)
  assert e.missing == ['backbone.layer1.0.bn1.running_var',
                       'roi_head.mask_head.conv_logits.bias']
  assert e.unexpected == ['roi_head.bbox_head.extra_fc.weight', 'foo.bar']
  assert [m[0] for m in e.mismatched] == [
      'backbone.conv1.weight', 'roi_head.bbox_head.fc_cls.weight',
      'roi_head.bbox_head.shared_fcs.0.weight']
  for name in e.missing + e.unexpected:
    assert f'  {name}\n' in msg + '\n'
  assert ('roi_head.bbox_head.fc_cls.weight: checkpoint (11, 1024) vs model '
          '(81, 1024)') in msg
  assert ('roi_head.bbox_head.shared_fcs.0.weight: checkpoint (1024, 100) vs '
          'model (1024, 12544)') in msg
  assert 'backbone.conv1.weight: checkpoint (64, 3, 3, 3) vs model (64, 3, 7, 7)' in msg
  assert '2 missing, 2 unexpected, 3 with a different shape' in msg
  out = capsys.readouterr()
  assert out.out == '' and out.err == ''
  # Without `expected`, an impossible shared_fcs.0 is still an error.
  with pytest.raises(mmdet.CheckpointMismatchError, match='shared_fcs.0'):
    mmdet.state_dict_to_variables(
        {'roi_head.bbox_head.shared_fcs.0.weight': np.zeros((8, 100))},
        r50_config)


def test_backbone_checkpoints(r50_state, r50_config, r50_variables,
                              r50_expected):
  bb = OrderedDict((k[len('backbone.'):], v) for k, v in r50_state.items()
                   if k.startswith('backbone.'))
  want = {c: r50_variables[c]['backbone'] for c in r50_variables}
  # torchvision layout: bare names, fc.* ignored and reported.
  tv = OrderedDict(bb)
  tv['fc.weight'] = np.zeros((1000, 2048), np.float32)
  tv['fc.bias'] = np.zeros((1000,), np.float32)
  ignored = []
  got = mmdet.backbone_state_dict_to_variables(tv, r50_config, r50_expected,
                                               ignored=ignored)
  assert ignored == ['fc.weight', 'fc.bias']
  # open-mmlab / MSRA layout: `backbone.` prefix, no num_batches_tracked;
  # expected given as the backbone subtree alone.
  mm = OrderedDict((k, v) for k, v in r50_state.items()
                   if k.startswith('backbone.')
                   and not k.endswith('num_batches_tracked'))
  sub = {c: r50_expected[c]['backbone'] for c in r50_expected}
  got2 = mmdet.backbone_state_dict_to_variables(mm, r50_config, sub)
  for g in (got, got2):
    assert set(g) == {'params', 'batch_stats'}
    a, b = mmdet.flatten_variables(g), mmdet.flatten_variables(want)
    assert set(a) == set(b)
    for k in b:
      np.testing.assert_array_equal(a[k], b[k])
  # Strictness: a missing and an unexpected key, named as in mmdet.
  del mm['backbone.layer4.2.bn3.bias']
  mm['backbone.layer5.0.conv1.weight'] = np.zeros((1, 1, 1, 1), np.float32)
  with pytest.raises(mmdet.CheckpointMismatchError) as info:
    mmdet.backbone_state_dict_to_variables(mm, r50_config, r50_expected)
  assert info.value.missing == ['backbone.layer4.2.bn3.bias']
  assert info.value.unexpected == ['backbone.layer5.0.conv1.weight']


def test_class_names_from_meta():
  names = tuple(f'c{i}' for i in range(3))
  assert mmdet.class_names_from_meta(
      {'dataset_meta': {'classes': list(names)}}, 3) == names
  assert mmdet.class_names_from_meta({'CLASSES': names}, 3) == names
  assert mmdet.class_names_from_meta({}, 80) == COCO_CLASSES
  assert mmdet.class_names_from_meta(None, 80) == COCO_CLASSES
  assert COCO_CLASSES == fx.coco_classes()
  with pytest.raises(ValueError, match='num_classes=20'):
    mmdet.class_names_from_meta({'mmdet_version': '2.0'}, 20)
  with pytest.raises(ValueError, match='3 classes'):
    mmdet.class_names_from_meta({'CLASSES': names}, 80)


# --------------------------------------------------------------------------
# Inference checkpoints and load_detector_variables
# --------------------------------------------------------------------------


def test_inference_checkpoint_round_trip(tmp_path, r50_config, r50_variables,
                                         r50_expected, r50_pth_legacy):
  out = tmp_path / 'ckpt'
  path = ckpt_lib.save_inference_checkpoint(
      out, r50_variables, COCO_CLASSES, 'r50_fpn_1x', {'note': 'test'},
      source='x.pth')
  assert os.path.isdir(path)
  assert os.listdir(tmp_path) == ['ckpt']  # no temporary directory left
  variables, meta = ckpt_lib.load_inference_checkpoint(out)
  assert tuple(meta['class_names']) == COCO_CLASSES
  assert meta['config_name'] == 'r50_fpn_1x'
  assert meta['source'] == 'x.pth' and meta['note'] == 'test'
  assert meta['format_version'] == ckpt_lib.FORMAT_VERSION
  a, b = mmdet.flatten_variables(variables), mmdet.flatten_variables(
      r50_variables)
  assert set(a) == set(b)
  for k in b:
    assert a[k].dtype == np.float32
    np.testing.assert_array_equal(a[k], b[k])
  with pytest.raises(FileExistsError):
    ckpt_lib.save_inference_checkpoint(out, r50_variables, COCO_CLASSES, 'x')
  small_vars = {'params': {'a': {'kernel': np.ones((2, 3), np.float32)}}}
  other = tmp_path / 'other'
  ckpt_lib.save_inference_checkpoint(other, small_vars, ('a',), 'x')
  ckpt_lib.save_inference_checkpoint(other, small_vars, ('b',), 'y',
                                     overwrite=True)
  _, meta2 = ckpt_lib.load_inference_checkpoint(other)
  assert meta2['class_names'] == ['b'] and meta2['config_name'] == 'y'
  with pytest.raises(ValueError, match='reserved'):
    ckpt_lib.save_inference_checkpoint(tmp_path / 'r', small_vars, ('a',),
                                       'x', {'class_names': []})
  # load_detector_variables: directory and .pth agree.
  v1, n1 = ckpt_lib.load_detector_variables(out, r50_config, r50_expected)
  v2, n2 = ckpt_lib.load_detector_variables(r50_pth_legacy, r50_config,
                                            r50_expected)
  assert n1 == n2 == COCO_CLASSES
  a, b = mmdet.flatten_variables(v1), mmdet.flatten_variables(v2)
  assert set(a) == set(b)
  for k in b:
    np.testing.assert_array_equal(a[k], b[k])
  # Strict check of a directory against another model.
  small = {c: dict(t) for c, t in r50_expected.items()}
  small['params'] = {k: v for k, v in small['params'].items()
                     if k != 'roi_head'}
  with pytest.raises(mmdet.CheckpointMismatchError,
                     match='inference checkpoint does not match'):
    ckpt_lib.load_detector_variables(out, r50_config, small)
  # Anything else.
  with pytest.raises(FileNotFoundError):
    ckpt_lib.load_detector_variables(tmp_path / 'nothing', r50_config)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='not an inference checkpoint'):
    ckpt_lib.load_detector_variables(tmp_path / 'empty', r50_config)
  junk = tmp_path / 'model.pkl'
  junk.write_bytes(b'\x00' * 100)
  with pytest.raises(pth.CheckpointFormatError, match=str(junk)):
    ckpt_lib.load_detector_variables(junk, r50_config)


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def test_cli_in_process(tmp_path, monkeypatch, capsys, r50_state,
                        r50_expected, r50_pth, r50_pth_legacy):
  monkeypatch.setattr(converter, '_abstract_variables',
                      lambda cfg: r50_expected)
  config = os.path.join(REPO, 'configs', 'r50_fpn_1x.py')
  # Both formats, with torch made unimportable: conversion needs no torch.
  for src in (r50_pth_legacy, r50_pth):
    out = tmp_path / ('out_' + os.path.basename(src))
    with monkeypatch.context() as m:
      m.setitem(sys.modules, 'torch', None)
      rc = cli.main(['--config', config, '--checkpoint', src,
                     '--out', str(out), '-v'])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert ('backbone.conv1.weight (64, 3, 7, 7) -> '
            'params/backbone/conv1/kernel (7, 7, 3, 64)') in captured.out
    assert ('backbone.bn1.running_mean (64) -> batch_stats/backbone/bn1/mean '
            '(64)') in captured.out
    assert 'backbone.bn1.num_batches_tracked -> (dropped)' in captured.out
    assert f'total parameters: {R50_PARAMS:,}' in captured.out
    variables, meta = ckpt_lib.load_inference_checkpoint(out)
    assert meta['config_name'] == 'r50_fpn_1x'
    assert meta['source'] == os.path.abspath(src)
    assert tuple(meta['class_names']) == COCO_CLASSES
    assert mmdet.count_parameters(variables) == R50_PARAMS
    np.testing.assert_array_equal(
        variables['params']['backbone']['conv1']['kernel'],
        r50_state['backbone.conv1.weight'].transpose(2, 3, 1, 0))
  # A mismatching checkpoint: message on stderr, exit status 1, no output.
  bad = OrderedDict(r50_state)
  del bad['rpn_head.rpn_cls.bias']
  bad_path = _save_pth(tmp_path / 'bad.pth', bad, {})
  rc = cli.main(['--config', config, '--checkpoint', bad_path,
                 '--out', str(tmp_path / 'out2')])
  captured = capsys.readouterr()
  assert rc == 1
  assert 'missing keys' in captured.err
  assert '  rpn_head.rpn_cls.bias' in captured.err
  assert not (tmp_path / 'out2').exists()
  rc = cli.main(['--config', config, '--checkpoint', str(tmp_path / 'no.pth'),
                 '--out', str(tmp_path / 'out3')])
  assert rc == 2 and 'no.pth' in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_BUILD, reason='maskrcnn_jax.models.build missing')
def test_cli_subprocess(tmp_path, r50_pth):
  out = tmp_path / 'converted'
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep +
             os.environ.get('PYTHONPATH', ''), JAX_PLATFORMS='cpu')
  # From another directory, the config by row name (as after pip install).
  res = subprocess.run(
      [sys.executable, '-m', 'maskrcnn_jax.convert', '--config',
       'r50_fpn_1x', '--checkpoint', r50_pth, '--out', str(out)],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  assert f'total parameters: {R50_PARAMS:,}' in res.stdout
  assert 'check against the model: passed' in res.stdout
  variables, meta = ckpt_lib.load_inference_checkpoint(out)
  assert tuple(meta['class_names']) == COCO_CLASSES
  assert mmdet.count_parameters(variables) == R50_PARAMS
  # The converted directory carries the row's config.
  assert ckpt_lib.load_checkpoint_config(out).to_dict() == load_config(
      'r50_fpn_1x').to_dict()
