"""Reading `.pth` files without torch (maskrcnn_jax.convert.pth).

torch writes the checkpoints (both formats) and its own `torch.load` is the
reference; `read_pth` itself never imports torch (checked in a subprocess).
"""

import collections
import contextlib
import datetime
import io
import os
import pickle
import pickletools
import subprocess
import sys
import tarfile
import types
import warnings
import zipfile

import numpy as np
import pytest
import torch

from maskrcnn_jax.convert import pth

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMATS = ['zip', 'legacy']


def _save(obj, path, fmt):
  torch.save(obj, str(path), _use_new_zipfile_serialization=(fmt == 'zip'))
  return str(path)


def _torch_load(path):
  return torch.load(path, map_location='cpu', weights_only=False)


def _as_numpy(t):
  t = t.detach()
  return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _assert_same(got, want_tensor, key):
  want = _as_numpy(want_tensor)
  assert isinstance(got, np.ndarray), key
  assert got.dtype == want.dtype, key
  assert got.shape == want.shape, key
  assert got.flags.c_contiguous and got.flags.writeable, key
  assert got.tobytes() == want.tobytes(order='C'), key  # same bits


def _every_dtype_state():
  """A state dict with every storage dtype, views, offsets and sharing."""
  g = torch.Generator().manual_seed(0)
  floats = torch.randn(4, 6, generator=g)
  floats[0, :3] = torch.tensor([float('nan'), float('inf'), -0.0])
  sd = collections.OrderedDict()
  for name, dtype in [('f32', torch.float32), ('f16', torch.float16),
                      ('bf16', torch.bfloat16), ('f64', torch.float64),
                      ('c64', torch.complex64)]:
    sd[name] = (floats * 100).to(dtype)
  for name, dtype in [('i64', torch.int64), ('i32', torch.int32),
                      ('i16', torch.int16), ('i8', torch.int8),
                      ('u8', torch.uint8)]:
    sd[name] = torch.randint(-120 if dtype != torch.uint8 else 0, 120, (3, 5),
                             generator=g).to(dtype)
  sd['big_i64'] = torch.tensor([2**62 + 7, -2**63, 2**63 - 1])
  sd['bool'] = torch.rand(7, generator=g) > 0.5
  sd['scalar'] = torch.tensor(3.5, dtype=torch.float64)
  sd['num_batches_tracked'] = torch.tensor(12345)
  sd['empty'] = torch.zeros(0, 3)
  base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
  sd['base'] = base                                 # shares with the views
  sd['transposed'] = base.permute(2, 0, 1)           # non-contiguous
  sd['sliced'] = base[1:, ::2, 1::3]                 # strides and offset
  sd['offset'] = base.view(-1)[7:19].view(3, 4)      # storage offset
  sd['expanded'] = torch.arange(3, dtype=torch.int16).expand(4, 3)  # stride 0
  sd['bf16_t'] = sd['bf16'].t()
  sd['tied_a'] = sd['tied_b'] = torch.full((2, 2), 7.0)  # one tensor, 2 keys
  sd['param'] = torch.nn.Parameter(torch.ones(3, 2) * 0.25)
  return sd


@pytest.mark.parametrize('fmt', FORMATS)
def test_every_dtype_and_view_equals_torch_load(tmp_path, fmt):
  path = _save(_every_dtype_state(), tmp_path / 'all.pth', fmt)
  want = _torch_load(path)
  got, meta = pth.read_pth(path)
  assert meta == {}
  assert list(got) == list(want)
  for k, t in want.items():
    _assert_same(got[k], t, k)
  assert got['bf16'].dtype == np.float32  # bfloat16 read as float32
  # Views of one storage are independent copies.
  got['base'][0, 0, 0] = -1
  got['tied_a'][0, 0] = -1
  assert got['transposed'][0, 0, 0] == 0 and got['tied_b'][0, 0] == 7


def _module_state_dict():
  """A real nn.Module state dict (`_metadata`, num_batches_tracked)."""
  torch.manual_seed(0)
  net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                            torch.nn.Linear(3, 2))
  net[1].running_mean.uniform_()
  sd = net.state_dict()
  assert hasattr(sd, '_metadata')
  return net, sd


class _HistoryBuffer:
  """Pickled as mmengine.logging.history_buffer.HistoryBuffer."""

  def __init__(self):
    self._log_history = np.array([0.1, 0.2])
    self._count_history = np.array([1, 1])
    self.max_length = 1000000


def _mmdet_checkpoint():
  """As MMDetection 2.x/3.x saves: meta, state_dict, optimizer."""
  net, sd = _module_state_dict()
  sd = collections.OrderedDict(('module.' + k, v) for k, v in sd.items())
  # torch.optim.SGD(momentum=0.9).state_dict() (importing torch.optim is slow)
  params = list(net.parameters())
  optimizer = {
      'state': {i: {'momentum_buffer': torch.randn_like(p.detach())}
                for i, p in enumerate(params)},
      'param_groups': [{'lr': 0.02, 'momentum': 0.9, 'weight_decay': 1e-4,
                        'nesterov': False, 'params': list(range(len(params)))}]}
  meta = {
      'mmdet_version': '3.3.0', 'CLASSES': ('person', 'car'),
      'epoch': 12, 'iter': 90000, 'seed': np.int64(42),
      'lr': np.float64(0.02), 'flag': np.bool_(True),
      'arr': np.arange(6, dtype=np.float32).reshape(2, 3),
      'obj_arr': np.array(['a', 1], dtype=object),
      'time': datetime.datetime(2020, 2, 5, 12, 30),
      'hook_msgs': collections.OrderedDict(last_ckpt='x.pth', best_score=0.3),
      'counts': collections.Counter(a=2), 'dd': collections.defaultdict(list),
      'config': "model = dict(type='MaskRCNN')\n",
      'tensor_in_meta': torch.arange(4, dtype=torch.int32)[1:],
      'message_hub': {'log_scalars': {'train/lr': _HistoryBuffer()}},
      'nested': [({'t': torch.ones(2)},), {1, 2}],
  }
  return {'meta': meta, 'state_dict': sd, 'optimizer': optimizer}


@contextlib.contextmanager
def _fake_mmengine():
  """mmengine.logging.history_buffer importable (for torch.save/torch.load)."""
  names = ['mmengine', 'mmengine.logging', 'mmengine.logging.history_buffer']
  saved = {n: sys.modules.get(n) for n in names}
  mod = types.ModuleType(names[-1])
  _HistoryBuffer.__module__ = names[-1]
  _HistoryBuffer.__qualname__ = _HistoryBuffer.__name__ = 'HistoryBuffer'
  mod.HistoryBuffer = _HistoryBuffer
  try:
    for n in names[:-1]:
      sys.modules[n] = types.ModuleType(n)
    sys.modules[names[-1]] = mod
    yield
  finally:
    for n, m in saved.items():
      if m is None:
        sys.modules.pop(n, None)
      else:
        sys.modules[n] = m


def _save_mmdet(obj, path, fmt):
  with _fake_mmengine():
    return _save(obj, path, fmt)


def _load_mmdet(path):
  with _fake_mmengine():
    return _torch_load(path)


@pytest.mark.parametrize('fmt', FORMATS)
def test_mmdetection_like_checkpoint(tmp_path, fmt):
  ckpt = _mmdet_checkpoint()
  path = _save_mmdet(ckpt, tmp_path / 'mmdet.pth', fmt)
  got, meta = pth.read_pth(path)
  want = _load_mmdet(path)['state_dict']
  assert list(got) == [k[len('module.'):] for k in want]
  for k, t in want.items():
    _assert_same(got[k[len('module.'):]], t, k)
  assert meta['mmdet_version'] == '3.3.0'
  assert meta['CLASSES'] == ('person', 'car')
  assert meta['epoch'] == 12 and meta['seed'] == 42 and meta['lr'] == 0.02
  assert meta['seed'].dtype == np.int64 and meta['flag'] is np.True_
  np.testing.assert_array_equal(meta['arr'], ckpt['meta']['arr'])
  assert list(meta['obj_arr']) == ['a', 1]
  assert meta['time'] == datetime.datetime(2020, 2, 5, 12, 30)
  assert meta['hook_msgs'] == {'last_ckpt': 'x.pth', 'best_score': 0.3}
  assert isinstance(meta['hook_msgs'], collections.OrderedDict)
  assert meta['counts'] == {'a': 2} and meta['config'] == ckpt['meta']['config']
  t = meta['tensor_in_meta']
  assert t.dtype == np.int32 and t.tolist() == [1, 2, 3]
  assert meta['nested'][0][0]['t'].tolist() == [1.0, 1.0]
  assert meta['nested'][1] == {1, 2}
  buf = meta['message_hub']['log_scalars']['train/lr']
  assert isinstance(buf, pth.UnpickledPlaceholder)
  assert type(buf).qualified_name() == (
      'mmengine.logging.history_buffer.HistoryBuffer')
  np.testing.assert_array_equal(buf.pickle_state['_log_history'], [0.1, 0.2])
  assert 'mmengine' not in sys.modules


def _pickles(data: bytes):
  """(start, end) byte ranges of the consecutive pickles at the start."""
  f, spans = io.BytesIO(data), []
  while len(spans) < 5:
    start = f.tell()
    for _ in pickletools.genops(f):
      pass
    spans.append((start, f.tell()))
  return spans


class _IdRecorder(pickle.Unpickler):
  """Maps a torch pickle's storage keys to (element size, byte-swap unit)."""

  def __init__(self, data):
    super().__init__(io.BytesIO(data))
    self.storages = {}

  def find_class(self, module, name):
    if module == 'torch._utils' or module == 'torch._tensor':
      return lambda *a: None
    return super().find_class(module, name)

  def persistent_load(self, pid):
    with warnings.catch_warnings():  # TypedStorage is deprecated
      warnings.simplefilter('ignore')
      dtype = pid[1].dtype  # complex numbers swap each part
    self.storages[pid[2]] = (dtype.itemsize,
                             dtype.itemsize // (2 if dtype.is_complex else 1))


def _swap(data: bytes, itemsize: int) -> bytes:
  return np.frombuffer(data, np.uint8).reshape(-1, itemsize)[:, ::-1].tobytes()


def _to_big_endian_zip(src, dst):
  with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w') as zout:
    prefix = zin.namelist()[0].split('/')[0] + '/'
    rec = _IdRecorder(zin.read(prefix + 'data.pkl'))
    rec.load()
    for name in zin.namelist():
      data = zin.read(name)
      if name == prefix + 'byteorder':
        data = b'big'
      elif name.startswith(prefix + 'data/'):
        data = _swap(data, rec.storages[name[len(prefix + 'data/'):]][1])
      zout.writestr(name, data)


def _to_big_endian_legacy(src, dst):
  with open(src, 'rb') as f:
    data = f.read()
  spans = _pickles(data)
  sys_info = pickle.loads(data[slice(*spans[2])])
  assert sys_info['little_endian'] is True
  sys_info['little_endian'] = False
  rec = _IdRecorder(data[slice(*spans[3])])
  rec.load()
  keys = pickle.loads(data[slice(*spans[4])])
  out = [data[:spans[2][0]], pickle.dumps(sys_info, protocol=2),
         data[spans[3][0]:spans[4][1]]]
  pos = spans[4][1]
  for key in keys:
    count = int.from_bytes(data[pos:pos + 8], 'little')
    itemsize, unit = rec.storages[key]
    size = count * itemsize
    out.append(count.to_bytes(8, 'big'))
    out.append(_swap(data[pos + 8:pos + 8 + size], unit))
    pos += 8 + size
  assert pos == len(data)
  with open(dst, 'wb') as f:
    f.write(b''.join(out))


@pytest.mark.parametrize('fmt', FORMATS)
def test_big_endian_byteorder_is_honoured(tmp_path, fmt):
  sd = _every_dtype_state()
  src = _save(sd, tmp_path / 'little.pth', fmt)
  want = _torch_load(src)
  dst = str(tmp_path / 'big.pth')
  (_to_big_endian_zip if fmt == 'zip' else _to_big_endian_legacy)(src, dst)
  with open(src, 'rb') as a, open(dst, 'rb') as b:
    assert a.read() != b.read()
  if fmt == 'zip':  # torch honours the zip byteorder record as well
    for k, t in _torch_load(dst).items():
      _assert_same(np.array(_as_numpy(want[k]), order='C'), t, k)
  got, _ = pth.read_pth(dst)
  assert list(got) == list(want)
  for k, t in want.items():
    _assert_same(got[k], t, k)


class _Storage:
  """Pickled as the persistent id of a storage by `_write_zip`/`_legacy`."""

  def __init__(self, key, storage_type, numel, view=None):
    self.key, self.storage_type, self.numel = key, storage_type, numel
    self.view = view  # legacy storage view: (view_key, offset, numel)


class _Tensor:

  def __init__(self, storage, offset, size, stride, rebuild=None):
    self.args = (storage, offset, size, stride, False,
                 collections.OrderedDict())
    self.rebuild = rebuild or torch._utils._rebuild_tensor_v2  # pylint: disable=protected-access

  def __reduce__(self):
    return (self.rebuild, self.args)


class _Pickler(pickle.Pickler):

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      pid = ('storage', obj.storage_type, obj.key, 'cpu', obj.numel)
      return pid if obj.view is None else pid + (obj.view,)
    return None


def _write_zip(path, obj, storages, byteorder=b'little'):
  """A hand-made zip-format checkpoint (tensors as `_Tensor`s)."""
  buf = io.BytesIO()
  _Pickler(buf, protocol=2).dump(obj)
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', buf.getvalue())
    z.writestr('archive/byteorder', byteorder)
    for key, data in storages.items():
      z.writestr(f'archive/data/{key}', data)
  return str(path)


def test_tensor_geometry_is_bounds_checked(tmp_path):
  s = _Storage('0', torch.FloatStorage, 4)
  data = {'0': np.arange(4, dtype=np.float32).tobytes()}
  ok = _write_zip(tmp_path / 'ok.pth', {'a': _Tensor(s, 1, (3,), (1,)),
                                        'b': _Tensor(s, 0, (2, 2), (1, 2))},
                  data)
  got, _ = pth.read_pth(ok)
  assert got['a'].tolist() == [1, 2, 3]
  assert got['b'].tolist() == [[0, 2], [1, 3]]
  for name, tensor, what in [
      ('past_end', _Tensor(s, 1, (2, 2), (2, 1)), 'runs past the end'),
      ('huge_stride', _Tensor(s, 0, (2,), (10**12,)), 'runs past the end'),
      ('negative_stride', _Tensor(s, 3, (2,), (-1,)), 'bad tensor geometry'),
      ('float_size', _Tensor(s, 0, (2.0,), (1,)), 'bad tensor geometry'),
      ('not_storage', _Tensor('0', 0, (2,), (1,)), 'not a storage'),
      ('subclass', _Tensor(s, 0, (2,), (1,), rebuild=os.system),
       'not a tensor')]:
    path = _write_zip(tmp_path / f'{name}.pth',
                      {'meta': {}, 'state_dict': {'w': tensor}}, data)
    with pytest.raises(pth.CheckpointFormatError) as info:
      pth.read_pth(path)
    msg = str(info.value)
    assert path in msg and what in msg and '\n' not in msg, msg
  # Storages that only other entries (the optimizer's) use are never read.
  lazy = _write_zip(
      tmp_path / 'lazy.pth',
      {'state_dict': {'a': _Tensor(s, 0, (4,), (1,))},
       'optimizer': {'m': _Tensor(_Storage('1', torch.FloatStorage, 9), 0,
                                  (9,), (1,))}}, data)
  assert pth.read_pth(lazy)[0]['a'].tolist() == [0, 1, 2, 3]
  short = _write_zip(tmp_path / 'short.pth', {'a': _Tensor(s, 0, (4,), (1,))},
                     {'0': data['0'][:12]})
  with pytest.raises(pth.CheckpointFormatError, match='has 12 bytes'):
    pth.read_pth(short)
  missing = _write_zip(tmp_path / 'missing.pth',
                       {'a': _Tensor(s, 0, (4,), (1,))}, {})
  with pytest.raises(pth.CheckpointFormatError, match='missing'):
    pth.read_pth(missing)
  bad_order = _write_zip(tmp_path / 'order.pth',
                         {'a': _Tensor(s, 0, (4,), (1,))}, data, b'middle')
  with pytest.raises(pth.CheckpointFormatError, match='byteorder'):
    pth.read_pth(bad_order)
  unknown = _write_zip(
      tmp_path / 'q.pth',
      {'a': _Tensor(_Storage('0', torch.QInt8Storage, 4), 0, (4,), (1,))},
      {'0': bytes(4)})
  with pytest.raises(pth.CheckpointFormatError, match='storage type'):
    pth.read_pth(unknown)


def _write_legacy(path, obj, storages):
  """A hand-made legacy checkpoint; `storages`: key -> (count, bytes)."""
  buf = io.BytesIO()
  for header in (0x1950a86a20f9469cfc6c, 1001, {'little_endian': True}):
    pickle.dump(header, buf, protocol=2)
  _Pickler(buf, protocol=2).dump(obj)
  pickle.dump(sorted(storages), buf, protocol=2)
  for key in sorted(storages):
    count, data = storages[key]
    buf.write(count.to_bytes(8, 'little') + data)
  with open(path, 'wb') as f:
    f.write(buf.getvalue())
  return str(path)


def test_legacy_storage_views_and_counts(tmp_path):
  data = np.arange(6, dtype=np.float32).tobytes()
  view = _Storage('0', torch.FloatStorage, 6, ('v', 2, 3))  # elements 2..4
  ok = _write_legacy(tmp_path / 'view.pth',
                     {'a': _Tensor(view, 0, (3,), (1,)),
                      'b': _Tensor(_Storage('0', torch.FloatStorage, 6), 4,
                                   (2,), (1,))}, {'0': (6, data)})
  got, _ = pth.read_pth(ok)
  assert got['a'].tolist() == [2, 3, 4] and got['b'].tolist() == [4, 5]
  past = _write_legacy(tmp_path / 'past.pth',
                       {'a': _Tensor(view, 1, (3,), (1,))}, {'0': (6, data)})
  with pytest.raises(pth.CheckpointFormatError, match='runs past the end'):
    pth.read_pth(past)
  s = _Storage('0', torch.FloatStorage, 6)
  for name, storages, what in [
      ('count', {'0': (5, data[:20])}, 'holds 5 elements'),
      ('short', {'0': (6, data[:20])}, 'truncated'),
      ('extra', {'0': (6, data), '1': (1, b'x')}, 'not used by the pickle')]:
    path = _write_legacy(tmp_path / f'{name}.pth', {'a': _Tensor(s, 0, (6,),
                                                                  (1,))},
                         storages)
    with pytest.raises(pth.CheckpointFormatError, match=what):
      pth.read_pth(path)


def test_allow_listed_globals_cannot_be_modified():
  for payload in [
      b'ctorch\nFloatStorage\n}Vdtype\nI1\nsb.',
      b'ctorch\nFloatStorage\nN}Vdtype\nI1\ns\x86b.',
      b'ctorch._utils\n_rebuild_tensor_v2\n}V__defaults__\n(I1\ntsb.',
      b'ctorch._utils\n_rebuild_tensor_v2\nN}V__defaults__\n(I1\nts\x86b.']:
    with pytest.raises(pickle.UnpicklingError, match='refused'):
      pth.restricted_loads(payload)
  assert pth.restricted_loads(b'ctorch\nFloatStorage\n.').dtype == np.float32


@pytest.mark.parametrize('fmt', FORMATS)
def test_truncated_and_corrupt_files(tmp_path, fmt):
  path = _save(_every_dtype_state(), tmp_path / 'good.pth', fmt)
  with open(path, 'rb') as f:
    data = f.read()
  cuts = [1, 20, len(data) // 3, len(data) // 2, len(data) - 1]
  cases = [(f'cut{n}', data[:n]) for n in cuts]
  if fmt == 'zip':  # a flipped byte inside a storage record: CRC mismatch
    with zipfile.ZipFile(path) as z:
      info = z.getinfo(z.namelist()[0].split('/')[0] + '/data/0')
    head = info.header_offset  # local header: name, extra lengths at 26, 28
    at = head + 30 + sum(np.frombuffer(data[head + 26:head + 30], '<u2')) + 2
    cases.append(('flipped', data[:at] + bytes([data[at] ^ 0xff]) +
                  data[at + 1:]))
  else:  # a wrong element count before the first storage
    spans = _pickles(data)
    pos = spans[4][1]
    cases.append(('count', data[:pos] + (10**6).to_bytes(8, 'little') +
                  data[pos + 8:]))
  for name, blob in cases:
    bad = tmp_path / f'{name}.pth'
    bad.write_bytes(blob)
    with pytest.raises(pth.CheckpointFormatError) as info:
      pth.read_pth(bad)
    msg = str(info.value)
    assert str(bad) in msg and '\n' not in msg, (name, msg)


@pytest.mark.filterwarnings('ignore::DeprecationWarning')  # torch.jit
def test_other_files_are_refused(tmp_path):
  plain_zip = tmp_path / 'plain.zip'
  with zipfile.ZipFile(plain_zip, 'w') as z:
    z.writestr('readme.txt', 'hello')
  with pytest.raises(pth.CheckpointFormatError, match='data.pkl'):
    pth.read_pth(plain_zip)
  tar = tmp_path / 'old.tar'
  with tarfile.open(tar, 'w') as t:
    t.add(str(plain_zip), arcname='pickle')
  with pytest.raises(pth.CheckpointFormatError, match='tar'):
    pth.read_pth(tar)
  script = tmp_path / 'model.pt'
  torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(script))
  with pytest.raises(pth.CheckpointFormatError, match=str(script)):
    pth.read_pth(script)
  empty = tmp_path / 'empty.pth'
  empty.write_bytes(b'')
  with pytest.raises(pth.CheckpointFormatError, match=str(empty)):
    pth.read_pth(empty)


_NO_TORCH = r'''
import sys
sys.modules['torch'] = None  # any `import torch` now raises ImportError
import numpy as np
from maskrcnn_jax.convert import pth
out = {}
for i, path in enumerate(sys.argv[2:]):
  state, meta = pth.read_pth(path)
  out.update({f'{i}/{k}': v for k, v in state.items()})
  out[f'{i}/meta_arr'] = meta['arr']
assert sys.modules['torch'] is None
assert not [m for m in sys.modules if m.startswith('torch.')], 'torch imported'
np.savez(sys.argv[1], **out)
'''


def test_reading_imports_no_torch(tmp_path):
  ckpt = _mmdet_checkpoint()
  ckpt['state_dict'].update(_every_dtype_state())
  paths = [_save_mmdet(ckpt, tmp_path / f'{fmt}.pth', fmt)
           for fmt in FORMATS]
  out = tmp_path / 'out.npz'
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep +
             os.environ.get('PYTHONPATH', ''))
  res = subprocess.run([sys.executable, '-c', _NO_TORCH, str(out)] + paths,
                       cwd=str(tmp_path), env=env, capture_output=True,
                       text=True, timeout=120)
  assert res.returncode == 0, res.stderr[-3000:]
  got = np.load(out)
  for i, path in enumerate(paths):
    want = _load_mmdet(path)
    for k, t in want['state_dict'].items():
      _assert_same(got[f'{i}/{k.removeprefix("module.")}'], t, k)
    np.testing.assert_array_equal(got[f'{i}/meta_arr'], want['meta']['arr'])
