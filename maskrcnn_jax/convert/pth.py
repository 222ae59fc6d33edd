"""Reading PyTorch `.pth` checkpoints with numpy: no torch, no pickled code.

A `.pth` written by `torch.save` is a pickle whose tensors point, through
persistent ids `('storage', storage_type, key, location, numel[, view])`, at
raw storages stored next to it:

- zip format (torch >= 1.6 default): `<prefix>/data.pkl` holds the pickle,
  `<prefix>/data/<key>` each storage's bytes, `<prefix>/byteorder` their
  byte order ("little" when absent).
- legacy format (`_use_new_zipfile_serialization=False`, which MMDetection
  used for its model zoo): pickles of the magic number, the protocol version
  and the system info (`little_endian`), then the object pickle, then a pickle
  of the storage keys, then for each key in that order an 8-byte element
  count followed by the storage's bytes.

`read_pth` parses both with a restricted unpickler: it resolves only the
globals that state dicts need, each mapped to a local, inert stand-in
(`torch._utils._rebuild_tensor_v2` records the storage, offset, size and
stride of a tensor; `torch.FloatStorage` names a numpy dtype), and turns every
other global (mmengine's `HistoryBuffer`, `os.system`, ...) into an inert
placeholder class, so nothing outside the allow-list is ever imported or run.
The tensors are then cut out of the storages with numpy (strides and storage
offsets honoured, bounds checked) and copied into C-contiguous arrays.

torch is never imported.
"""

import _codecs
import collections
import datetime
import io
import math
import os
import pickle
import struct
import sys
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import ml_dtypes
import numpy as np


class CheckpointFormatError(ValueError):
  """A file is not a readable PyTorch checkpoint."""


# --------------------------------------------------------------------------
# Inert placeholders for refused globals.
# --------------------------------------------------------------------------


class UnpickledPlaceholder:
  """Stand-in for a global the restricted unpickler refused to resolve.

  Calling the class (pickle's REDUCE), `cls.__new__` (NEWOBJ), `__setstate__`
  (BUILD), `append`/`extend` (APPENDS) and item assignment (SETITEMS) only
  record their arguments; nothing is imported or executed.
  """

  _pickle_module = '?'
  _pickle_name = '?'

  def __new__(cls, *args, **kwargs):
    obj = object.__new__(cls)
    obj.__dict__.update(
        pickle_args=args, pickle_kwargs=kwargs, pickle_state=None,
        pickle_items=[], pickle_dict_items={})
    return obj

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __setstate__(self, state):
    self.__dict__['pickle_state'] = state

  def append(self, item):
    self.__dict__['pickle_items'].append(item)

  def extend(self, items):
    self.__dict__['pickle_items'].extend(items)

  def __setitem__(self, key, value):
    self.__dict__['pickle_dict_items'][key] = value

  @classmethod
  def qualified_name(cls) -> str:
    return f'{cls._pickle_module}.{cls._pickle_name}'

  def __repr__(self):
    return f'<not loaded: {self.qualified_name()}>'


_PLACEHOLDERS: Dict[Tuple[str, str], type] = {}


def _placeholder(module: str, name: str) -> type:
  key = (str(module), str(name))
  cls = _PLACEHOLDERS.get(key)
  if cls is None:
    cls = type(f'Unloaded[{key[0]}.{key[1]}]', (UnpickledPlaceholder,),
               {'_pickle_module': key[0], '_pickle_name': key[1],
                '__module__': __name__})
    _PLACEHOLDERS[key] = cls
  return cls


# --------------------------------------------------------------------------
# Local stand-ins for torch's storages, dtypes and tensor rebuilders.
# --------------------------------------------------------------------------

# torch storage class name -> numpy dtype of its elements.
_STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16, 'DoubleStorage': np.float64,
    'LongStorage': np.int64, 'IntStorage': np.int32, 'ShortStorage': np.int16,
    'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
    'ComplexFloatStorage': np.complex64, 'ComplexDoubleStorage': np.complex128,
    'UntypedStorage': np.uint8,
}

# torch dtype name (`torch.float32` pickles as the global `torch float32`).
_TORCH_DTYPES = {
    'float32': np.float32, 'float': np.float32, 'float16': np.float16,
    'half': np.float16, 'bfloat16': ml_dtypes.bfloat16,
    'float64': np.float64, 'double': np.float64, 'int64': np.int64,
    'long': np.int64, 'int32': np.int32, 'int': np.int32, 'int16': np.int16,
    'short': np.int16, 'int8': np.int8, 'uint8': np.uint8, 'bool': np.bool_,
    'complex64': np.complex64, 'cfloat': np.complex64,
    'complex128': np.complex128, 'cdouble': np.complex128,
}


class _Frozen:
  """Immutable: pickle's BUILD on an allow-listed object cannot modify it."""

  __slots__ = ()

  def __setattr__(self, name, value):
    raise pickle.UnpicklingError(f'refused to set {name!r} on {self!r}')

  def __setstate__(self, state):
    raise pickle.UnpicklingError(f'refused to set the state of {self!r}')


class _TorchType(_Frozen):
  """A torch storage class or dtype, as named in the pickle."""

  __slots__ = ('name', 'dtype')

  def __init__(self, name: str, dtype):
    object.__setattr__(self, 'name', name)
    object.__setattr__(self, 'dtype', np.dtype(dtype))

  def __repr__(self):
    return f'torch.{self.name}'


class _Function(_Frozen):
  """An allow-listed Python function (the object a pickled global names)."""

  __slots__ = ('fn',)

  def __init__(self, fn):
    object.__setattr__(self, 'fn', fn)

  def __call__(self, *args, **kwargs):
    return self.fn(*args, **kwargs)

  def __repr__(self):
    return f'<{self.fn.__name__}>'


class _Storage:
  """One serialized storage: `numel` elements of `dtype`, read on demand."""

  def __init__(self, key: str, dtype: np.dtype, numel: int):
    self.key = key
    self.dtype = dtype
    self.numel = numel
    self.nbytes = numel * dtype.itemsize
    self.data: Optional[np.ndarray] = None  # uint8, native byte order
    self.uses = 0  # tensors still to be cut out of it


class _StorageRef:
  """What a persistent id resolves to: a storage, or an element range of it."""

  def __init__(self, storage: _Storage, offset: int, numel: int):
    self.storage = storage
    self.offset = offset  # in elements of storage.dtype
    self.numel = numel


class _PendingTensor:
  """A tensor recorded by a rebuild function; cut out after unpickling."""

  def __init__(self, ref, offset, size, stride, dtype=None):
    if not isinstance(ref, _StorageRef):
      raise pickle.UnpicklingError(
          f'tensor rebuilt from a {type(ref).__name__}, not a storage')
    if dtype is not None and not isinstance(dtype, _TorchType):
      raise pickle.UnpicklingError(f'tensor dtype {dtype!r} is not a dtype')
    if not (_is_index(offset) and isinstance(size, (tuple, list)) and
            isinstance(stride, (tuple, list)) and len(size) == len(stride) and
            all(map(_is_index, size)) and all(map(_is_index, stride))):
      raise pickle.UnpicklingError(
          f'bad tensor geometry: offset {offset!r}, size {size!r}, '
          f'stride {stride!r}')
    self.ref = ref
    self.offset = int(offset)
    self.size = tuple(int(s) for s in size)
    self.stride = tuple(int(s) for s in stride)
    self.dtype = ref.storage.dtype if dtype is None else dtype.dtype

  def __repr__(self):
    return f'<tensor {self.dtype} {self.size}>'


def _is_index(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, dtype, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _PendingTensor(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
  del requires_grad, backward_hooks, state
  return data


_REBUILDERS = tuple(map(_Function, (_rebuild_tensor, _rebuild_tensor_v2,
                                     _rebuild_tensor_v3, _rebuild_parameter)))


def _rebuild_from_type(func, new_type, args, state):
  """torch._tensor._rebuild_from_type(_v2): a tensor subclass, kept as one."""
  del new_type, state
  if not any(func is f for f in _REBUILDERS):
    raise pickle.UnpicklingError(
        f'refused tensor subclass rebuilt by {func!r}')
  return func(*args)


# --------------------------------------------------------------------------
# The allow-list.
# --------------------------------------------------------------------------

# Python 2 and numpy 1.x module names.
_MODULE_ALIASES = {
    '__builtin__': 'builtins',
    'copy_reg': 'copyreg',
    'numpy.core.multiarray': 'numpy._core.multiarray',
    'numpy.core.numeric': 'numpy._core.numeric',
}

_SAFE_BUILTINS = ('dict', 'list', 'tuple', 'set', 'frozenset', 'int', 'float',
                  'complex', 'str', 'bytes', 'bytearray', 'bool', 'slice',
                  'range', 'object', 'NoneType')

_SAFE_CODECS = ('latin1', 'latin-1', 'iso-8859-1', 'iso8859-1', 'utf-8',
                'utf8', 'ascii')


def _safe_codecs_encode(obj, encoding='utf-8', errors='strict'):
  """`_codecs.encode` limited to text codecs (protocol 2 pickles bytes so)."""
  if (not isinstance(obj, str) or not isinstance(encoding, str) or
      encoding.lower() not in _SAFE_CODECS):
    raise pickle.UnpicklingError(
        f'refused _codecs.encode with encoding {encoding!r}')
  return _codecs.encode(obj, encoding, errors)


def _build_allowed() -> Dict[Tuple[str, str], Any]:
  """(module, name) -> the local object a pickled global resolves to."""
  import builtins  # pylint: disable=g-import-not-at-top
  allowed = {}
  for f in _REBUILDERS:
    allowed[('torch._utils', f.fn.__name__)] = f
  allowed[('torch._utils', '_rebuild_parameter_with_state')] = _REBUILDERS[-1]
  from_type = _Function(_rebuild_from_type)
  for name in ('_rebuild_from_type', '_rebuild_from_type_v2'):
    allowed[('torch._tensor', name)] = from_type
  allowed[('torch', 'Size')] = tuple
  for name, dtype in _STORAGE_DTYPES.items():
    allowed[('torch', name)] = _TorchType(name, dtype)
  allowed[('torch.storage', 'UntypedStorage')] = allowed[
      ('torch', 'UntypedStorage')]
  for name, dtype in _TORCH_DTYPES.items():
    allowed[('torch', name)] = _TorchType(name, dtype)
  for name in ('OrderedDict', 'defaultdict', 'Counter', 'deque'):
    allowed[('collections', name)] = getattr(collections, name)
  for name in ('datetime', 'date', 'time', 'timedelta', 'timezone'):
    allowed[('datetime', name)] = getattr(datetime, name)
  for name in _SAFE_BUILTINS:
    if hasattr(builtins, name):
      allowed[('builtins', name)] = getattr(builtins, name)
  allowed[('_codecs', 'encode')] = _Function(_safe_codecs_encode)
  allowed[('codecs', 'encode')] = allowed[('_codecs', 'encode')]
  # numpy scalars, dtypes and (small) arrays in `meta`.
  core = getattr(np, '_core', None) or np.core
  multiarray = core.multiarray
  allowed[('numpy._core.multiarray', 'scalar')] = multiarray.scalar
  allowed[('numpy._core.multiarray', '_reconstruct')] = multiarray._reconstruct  # pylint: disable=protected-access
  if hasattr(core.numeric, '_frombuffer'):
    allowed[('numpy._core.numeric', '_frombuffer')] = _Function(
        core.numeric._frombuffer)  # pylint: disable=protected-access
  allowed[('numpy', 'dtype')] = np.dtype
  allowed[('numpy', 'ndarray')] = np.ndarray
  for name in dir(np.dtypes):
    value = getattr(np.dtypes, name)
    if isinstance(value, type) and issubclass(value, np.dtype):
      allowed[('numpy.dtypes', name)] = value
  return allowed


_ALLOWED: Dict[Tuple[str, str], Any] = _build_allowed()


class RestrictedUnpickler(pickle.Unpickler):
  """Resolves allow-listed globals only; any other becomes a placeholder."""

  def find_class(self, module, name):
    module = _MODULE_ALIASES.get(module, module)
    obj = _ALLOWED.get((module, name))
    if obj is not None:
      return obj
    return _placeholder(module, name)


def restricted_loads(data: bytes) -> Any:
  """`pickle.loads` with the allow-list of `read_pth` (for tests/inspection)."""
  return RestrictedUnpickler(io.BytesIO(data)).load()


def _ascii(x):
  return x.decode('ascii') if isinstance(x, bytes) else x


class _CheckpointUnpickler(RestrictedUnpickler):
  """Also resolves torch's storage persistent ids to `_StorageRef`s."""

  def __init__(self, file, storages: Dict[str, _Storage]):
    super().__init__(file, encoding='utf-8')
    self._storages = storages

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid:
      raise pickle.UnpicklingError(f'unknown persistent id {pid!r:.80}')
    kind = _ascii(pid[0])
    if kind == 'module' and len(pid) >= 2:  # a pickled nn.Module's class
      return pid[1]
    if kind != 'storage' or len(pid) not in (5, 6):
      raise pickle.UnpicklingError(f'unknown persistent id {pid!r:.80}')
    storage_type, key, _, numel = pid[1:5]
    view = pid[5] if len(pid) == 6 else None
    key = _ascii(key)
    if not isinstance(storage_type, _TorchType) or (
        storage_type.name not in _STORAGE_DTYPES):
      raise pickle.UnpicklingError(
          f'unsupported storage type {storage_type!r}')
    if not isinstance(key, str) or not _is_index(numel):
      raise pickle.UnpicklingError(f'bad storage id {pid!r:.80}')
    storage = self._storages.get(key)
    if storage is None:
      storage = _Storage(key, storage_type.dtype, numel)
      self._storages[key] = storage
    elif storage.dtype != storage_type.dtype or storage.numel != numel:
      raise pickle.UnpicklingError(
          f'storage {key} is named as {storage.numel} x {storage.dtype} and '
          f'as {numel} x {storage_type.dtype}')
    if view is None:
      return _StorageRef(storage, 0, numel)
    # Legacy storage views (torch < 1.0): (view_key, offset, view_size).
    if not (isinstance(view, tuple) and len(view) == 3 and
            _is_index(view[1]) and _is_index(view[2]) and
            view[1] + view[2] <= numel):
      raise pickle.UnpicklingError(f'bad storage view {view!r:.80}')
    return _StorageRef(storage, view[1], view[2])


# --------------------------------------------------------------------------
# The two file formats.
# --------------------------------------------------------------------------

_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001


def _byteswap(data: np.ndarray, dtype: np.dtype) -> np.ndarray:
  """Byte-swapped `data` (uint8) of `dtype` elements (complex: each part)."""
  itemsize = dtype.itemsize // (2 if dtype.kind == 'c' else 1)
  if itemsize == 1:
    return data
  return np.ascontiguousarray(data.reshape(-1, itemsize)[:, ::-1]).reshape(-1)


def _need(ok: bool, msg: str):
  if not ok:
    raise CheckpointFormatError(msg)


def _load_zip(zf: zipfile.ZipFile):
  """(object, fill) of a zip-format checkpoint; fill(storages) reads those."""
  names = zf.namelist()
  pkls = [n for n in names if n.endswith('/data.pkl') and n.count('/') == 1]
  _need(bool(pkls), 'a zip archive without <name>/data.pkl, so not a '
        'torch.save checkpoint')
  first = names[0].split('/')[0] + '/data.pkl'
  prefix = (first if first in pkls else pkls[0])[:-len('data.pkl')]
  byteorder = 'little'
  if prefix + 'byteorder' in names:
    byteorder = zf.read(prefix + 'byteorder').decode('ascii', 'replace')
    _need(byteorder in ('little', 'big'),
          f'unknown byteorder record {byteorder!r}')
  storages: Dict[str, _Storage] = {}
  obj = _CheckpointUnpickler(io.BytesIO(zf.read(prefix + 'data.pkl')),
                             storages).load()

  def fill(needed: List[_Storage]):
    for s in needed:
      name = f'{prefix}data/{s.key}'
      _need(name in names, f'storage record {name} is missing')
      info = zf.getinfo(name)
      _need(info.file_size == s.nbytes,
            f'storage record {name} has {info.file_size} bytes, expected '
            f'{s.nbytes} ({s.numel} x {s.dtype})')
      data = np.frombuffer(zf.read(name), np.uint8)
      if byteorder != sys.byteorder:
        data = _byteswap(data, s.dtype)
      s.data = data

  return obj, fill


def _load_legacy(f, file_size: int):
  """(object, fill) of a legacy checkpoint; fill(storages) reads those."""
  try:
    magic = RestrictedUnpickler(f, encoding='utf-8').load()
  except Exception:  # pylint: disable=broad-except
    magic = None
  _need(isinstance(magic, int) and magic == _LEGACY_MAGIC,
        'neither a zip archive nor a legacy torch.save file (bad magic number)')
  protocol = RestrictedUnpickler(f, encoding='utf-8').load()
  _need(protocol == _LEGACY_PROTOCOL,
        f'unsupported legacy protocol version {protocol!r}')
  sys_info = RestrictedUnpickler(f, encoding='utf-8').load()
  _need(isinstance(sys_info, dict), 'bad legacy system info record')
  little = sys_info.get('little_endian', True)
  _need(isinstance(little, bool), f'bad little_endian record {little!r}')
  byteorder = 'little' if little else 'big'
  storages: Dict[str, _Storage] = {}
  obj = _CheckpointUnpickler(f, storages).load()
  keys = RestrictedUnpickler(f, encoding='utf-8').load()
  _need(isinstance(keys, list) and all(isinstance(_ascii(k), str)
                                       for k in keys),
        'bad storage key list')
  keys = [_ascii(k) for k in keys]
  data_start = f.tell()

  def fill(needed: List[_Storage]):
    wanted = {id(s) for s in needed}
    f.seek(data_start)
    for key in keys:
      s = storages.get(key)
      _need(s is not None, f'storage {key} is not used by the pickle')
      head = f.read(8)
      _need(len(head) == 8, f'truncated before storage {key}')
      (count,) = struct.unpack('<q' if little else '>q', head)
      _need(count == s.numel, f'storage {key} holds {count} elements, its '
            f'tensors name {s.numel}')
      _need(f.tell() + s.nbytes <= file_size,
            f'truncated: storage {key} needs {s.nbytes} bytes, '
            f'{file_size - f.tell()} left')
      if id(s) not in wanted:
        f.seek(s.nbytes, 1)
        continue
      data = np.frombuffer(f.read(s.nbytes), np.uint8)
      if byteorder != sys.byteorder:
        data = _byteswap(data, s.dtype)
      s.data = data
    missing = [s.key for s in needed if s.data is None]
    _need(not missing, f'storage {missing[:1]} has no data')

  return obj, fill


def _tensor_array(t: _PendingTensor) -> np.ndarray:
  """The tensor `t` cut out of its storage: a C-contiguous copy."""
  ref, dtype = t.ref, t.dtype
  s = ref.storage
  start = ref.offset * s.dtype.itemsize  # bytes
  avail = ref.numel * s.dtype.itemsize // dtype.itemsize  # in dtype elements
  if math.prod(t.size) == 0:
    out = np.zeros(t.size, dtype)
  else:
    last = t.offset + sum((n - 1) * st for n, st in zip(t.size, t.stride))
    _need(last < avail,
          f'a tensor of size {t.size}, stride {t.stride} at offset {t.offset} '
          f'runs past the end of its storage {s.key} ({avail} x {dtype})')
    flat = s.data[start:start + avail * dtype.itemsize].view(dtype)
    view = np.lib.stride_tricks.as_strided(
        flat[t.offset:], shape=t.size,
        strides=tuple(st * dtype.itemsize for st in t.stride), writeable=False)
    out = np.array(view, copy=True, order='C')
  s.uses -= 1
  if s.uses <= 0:
    s.data = None
  if out.dtype == ml_dtypes.bfloat16:
    out = out.astype(np.float32)
  return out


def _collect_tensors(obj, found: List[_PendingTensor], seen: set):
  """Appends every `_PendingTensor` reachable from `obj` (containers only)."""
  if isinstance(obj, _PendingTensor):
    found.append(obj)
    return
  if id(obj) in seen:
    return
  if isinstance(obj, dict):
    seen.add(id(obj))
    for v in obj.values():
      _collect_tensors(v, found, seen)
  elif isinstance(obj, (list, tuple, collections.deque)):
    seen.add(id(obj))
    for v in obj:
      _collect_tensors(v, found, seen)
  elif isinstance(obj, UnpickledPlaceholder):
    seen.add(id(obj))
    _collect_tensors(obj.__dict__, found, seen)


def _replace_tensors(obj, memo: Dict[int, Any]):
  """`obj` with each `_PendingTensor` replaced by its array (in place)."""
  if isinstance(obj, _PendingTensor):
    return _tensor_array(obj)
  if id(obj) in memo:
    return memo[id(obj)]
  if isinstance(obj, dict):
    memo[id(obj)] = obj
    for k in list(obj):
      obj[k] = _replace_tensors(obj[k], memo)
  elif isinstance(obj, (list, collections.deque)):
    memo[id(obj)] = obj
    for i, v in enumerate(obj):
      obj[i] = _replace_tensors(v, memo)
  elif type(obj) is tuple:  # pylint: disable=unidiomatic-typecheck
    memo[id(obj)] = obj
    new = tuple(_replace_tensors(v, memo) for v in obj)
    if any(a is not b for a, b in zip(new, obj)):
      memo[id(obj)] = new
      return new
  elif isinstance(obj, UnpickledPlaceholder):
    memo[id(obj)] = obj
    _replace_tensors(obj.__dict__, memo)
  return obj


# --------------------------------------------------------------------------
# read_pth
# --------------------------------------------------------------------------


def _one_line(e: BaseException) -> str:
  return ' '.join(str(e).split())


def _entry_to_numpy(key: str, value) -> np.ndarray:
  if isinstance(value, _PendingTensor):
    return _tensor_array(value)
  if isinstance(value, np.ndarray):
    return np.array(value, copy=True, order='C')
  if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
    return np.asarray(value)
  if (isinstance(value, UnpickledPlaceholder) and
      type(value).qualified_name().startswith('torch.')):
    raise CheckpointFormatError(
        f'tensor {key!r} is stored as {type(value).qualified_name()}, which is '
        'not supported (only dense tensors are)')
  raise CheckpointFormatError(
      f'state dict entry {key!r} is not a tensor '
      f'(got {type(value).__name__}: {value!r:.80})')


def _read(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
  with open(path, 'rb') as f:
    head = f.read(512)
    f.seek(0)
    if head[:4] in (b'PK\x03\x04', b'PK\x05\x06'):
      with zipfile.ZipFile(f) as zf:
        return _convert(*_load_zip(zf))
    _need(head[257:262] != b'ustar',
          'a tar archive: the oldest (tar) torch.save format is not '
          'supported')
    file_size = os.fstat(f.fileno()).st_size
    return _convert(*_load_legacy(f, file_size))


def _convert(ckpt, fill):
  """(state_dict, meta) of an unpickled checkpoint (see read_pth)."""
  meta: Dict[str, Any] = {}
  bare = not (isinstance(ckpt, dict) and 'state_dict' in ckpt)
  if not bare:
    raw = ckpt['state_dict']
    meta = ckpt.get('meta') or {}
    if not isinstance(meta, dict):
      meta = {'meta': meta}
  else:
    raw = ckpt
  _need(isinstance(raw, dict), 'expected a state dict or {"state_dict": ...}, '
        f'got {type(raw).__name__}')
  _need(bool(raw), 'the state dict is empty')
  _need(all(isinstance(k, str) for k in raw),
        'top-level dict is not a state dict (non-string keys) and has no '
        '"state_dict" entry')
  tensors = [v for v in raw.values() if isinstance(v, _PendingTensor)]
  _collect_tensors(meta, tensors, set())
  needed = {}
  for t in tensors:
    t.ref.storage.uses += 1
    needed[id(t.ref.storage)] = t.ref.storage
  fill(list(needed.values()))
  state: Dict[str, np.ndarray] = {}
  for key, value in raw.items():
    name = key[len('module.'):] if key.startswith('module.') else key
    _need(name not in state,
          f'key {name!r} occurs twice (with and without "module.")')
    try:
      state[name] = _entry_to_numpy(key, value)
    except CheckpointFormatError:
      if bare and not isinstance(value, _PendingTensor):
        raise CheckpointFormatError(
            'no "state_dict" entry and the top level is not a bare state dict '
            f'(keys: {sorted(raw)[:10]})') from None
      raise
  meta = _replace_tensors(meta, {})
  return state, meta


def read_pth(path) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
  """Reads an MMDetection/PyTorch checkpoint with numpy, without torch.

  Args:
    path: a `.pth` file in the zip or the legacy torch format, whose top level
      is `{'state_dict': ..., 'meta': ...}` or a bare state dict. Storages of
      float32/16/64, bfloat16, int64/32/16/8, uint8, bool and complex dtypes
      are read, in either byte order.

  Returns:
    (state_dict, meta): `state_dict` maps each key (a leading `module.`
    stripped) to a C-contiguous numpy array in the file's own key order and
    dtype (bfloat16 read as float32); `meta` is the checkpoint's `meta` dict
    ({} if none), its tensors as numpy arrays too. Objects of classes outside
    the allow-list are `UnpickledPlaceholder` instances. Other top-level
    entries (`optimizer`, ...) are parsed but their storages not read.

  Raises:
    FileNotFoundError: `path` does not exist.
    CheckpointFormatError: `path` is not a torch checkpoint, is truncated or
      corrupt, or holds no state dict (a one-line message naming `path`).
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'checkpoint file not found: {path}')
  if not os.path.isfile(path):
    raise CheckpointFormatError(f'{path} is not a file, so not a PyTorch '
                                'checkpoint (.pth)')
  try:
    return _read(path)
  except CheckpointFormatError as e:
    raise CheckpointFormatError(f'{path}: {_one_line(e)}') from None
  except RecursionError:
    raise CheckpointFormatError(
        f'{path}: objects nested too deeply to read') from None
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointFormatError(
        f'{path} is not a readable PyTorch checkpoint (.pth) file: '
        f'{type(e).__name__}: {_one_line(e)}') from None
