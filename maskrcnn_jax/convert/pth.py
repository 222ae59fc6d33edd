"""Reading PyTorch `.pth` checkpoints without arbitrary unpickling.

MMDetection publishes its checkpoints with `torch.save(...,
_use_new_zipfile_serialization=False)` (the legacy, non-zip format) and their
`meta` may hold objects of libraries that are not installed here (mmengine's
`HistoryBuffer`, numpy scalars, ...). `torch.load(weights_only=True)` refuses
some of these, while `weights_only=False` with the stock `pickle` would import
and run whatever a file names. `read_pth` instead passes a restricted pickle
module to `torch.load`: its unpickler resolves only the globals that tensors
and state dicts need and turns every other global into an inert placeholder
class, so nothing outside the allow-list is ever imported or called.

torch is imported lazily, inside the functions that read files.
"""

import _codecs
import collections
import io
import os
import pickle
import types
from typing import Any, Dict, Tuple

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
# The allow-list.
# --------------------------------------------------------------------------

# Python 2 module names that protocol <= 2 pickles use.
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


_ALLOWED: Dict[Tuple[str, str], Any] = {}


def _allowed_globals() -> Dict[Tuple[str, str], Any]:
  """(module, name) -> object; built on first use (imports torch)."""
  if _ALLOWED:
    return _ALLOWED
  import torch  # pylint: disable=g-import-not-at-top
  import torch._utils  # pylint: disable=g-import-not-at-top
  import torch._tensor  # pylint: disable=g-import-not-at-top
  allowed = {}
  for name in ('_rebuild_tensor', '_rebuild_tensor_v2', '_rebuild_tensor_v3',
               '_rebuild_parameter', '_rebuild_parameter_with_state'):
    if hasattr(torch._utils, name):
      allowed[('torch._utils', name)] = getattr(torch._utils, name)
  for name in ('_rebuild_from_type', '_rebuild_from_type_v2'):
    if hasattr(torch._tensor, name):
      allowed[('torch._tensor', name)] = getattr(torch._tensor, name)
  allowed[('torch', 'Tensor')] = torch.Tensor
  allowed[('torch._tensor', 'Tensor')] = torch.Tensor
  allowed[('torch.nn.parameter', 'Parameter')] = torch.nn.Parameter
  allowed[('torch', 'Size')] = torch.Size
  allowed[('torch', 'device')] = torch.device
  for name in dir(torch):
    value = getattr(torch, name, None)
    if isinstance(value, torch.dtype):
      allowed[('torch', name)] = value
    elif (name.endswith('Storage') and isinstance(value, type) and
          not name.startswith('_')):
      allowed[('torch', name)] = value
  for name in ('UntypedStorage', 'TypedStorage'):
    if hasattr(torch.storage, name):
      allowed[('torch.storage', name)] = getattr(torch.storage, name)
  allowed[('collections', 'OrderedDict')] = collections.OrderedDict
  allowed[('collections', 'defaultdict')] = collections.defaultdict
  import builtins  # pylint: disable=g-import-not-at-top
  for name in _SAFE_BUILTINS:
    if hasattr(builtins, name):
      allowed[('builtins', name)] = getattr(builtins, name)
  allowed[('_codecs', 'encode')] = _safe_codecs_encode
  allowed[('codecs', 'encode')] = _safe_codecs_encode
  # numpy scalars, dtypes and (small) arrays in `meta`.
  multiarray = np._core.multiarray  # pylint: disable=protected-access
  allowed[('numpy._core.multiarray', 'scalar')] = multiarray.scalar
  allowed[('numpy._core.multiarray', '_reconstruct')] = multiarray._reconstruct  # pylint: disable=protected-access
  allowed[('numpy', 'dtype')] = np.dtype
  allowed[('numpy', 'ndarray')] = np.ndarray
  for name in dir(np.dtypes):
    value = getattr(np.dtypes, name)
    if isinstance(value, type) and issubclass(value, np.dtype):
      allowed[('numpy.dtypes', name)] = value
  _ALLOWED.update(allowed)
  return _ALLOWED


class RestrictedUnpickler(pickle.Unpickler):
  """Resolves allow-listed globals only; any other becomes a placeholder."""

  def find_class(self, module, name):
    module = _MODULE_ALIASES.get(module, module)
    obj = _allowed_globals().get((module, name))
    if obj is not None:
      return obj
    return _placeholder(module, name)


def _restricted_load(file, **kwargs):
  return RestrictedUnpickler(file, **kwargs).load()


def _restricted_loads(data, **kwargs):
  return RestrictedUnpickler(io.BytesIO(data), **kwargs).load()


# What torch.load uses of `pickle_module`: `Unpickler` (subclassed for
# `persistent_load` and storage names) and `load` (legacy format headers).
restricted_pickle = types.ModuleType('maskrcnn_jax_restricted_pickle')
restricted_pickle.Unpickler = RestrictedUnpickler
restricted_pickle.load = _restricted_load
restricted_pickle.loads = _restricted_loads
restricted_pickle.UnpicklingError = pickle.UnpicklingError
restricted_pickle.__doc__ = 'pickle with an allow-list of globals (see pth.py)'


def restricted_loads(data: bytes) -> Any:
  """`pickle.loads` with the allow-list of `read_pth` (for tests/inspection)."""
  return _restricted_loads(data)


# --------------------------------------------------------------------------
# read_pth
# --------------------------------------------------------------------------


def _to_numpy(key: str, value, path: str) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  if isinstance(value, torch.Tensor):
    t = value.detach()
    if t.layout != torch.strided or t.is_quantized:
      raise CheckpointFormatError(
          f'{path}: tensor {key!r} has an unsupported layout ({t.layout})')
    t = t.cpu()
    if t.dtype == torch.bfloat16:
      t = t.float()
    return np.array(t.numpy(), copy=True, order='C')
  if isinstance(value, np.ndarray):
    return np.array(value, copy=True, order='C')
  if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
    return np.asarray(value)
  raise CheckpointFormatError(
      f'{path}: state dict entry {key!r} is not a tensor '
      f'(got {type(value).__name__}: {value!r:.80})')


def read_pth(path) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
  """Reads an MMDetection/PyTorch checkpoint without arbitrary unpickling.

  Args:
    path: a `.pth` file in the zip or the legacy (tar/pickle) torch format,
      whose top level is `{'state_dict': ..., 'meta': ...}` or a bare state
      dict.

  Returns:
    (state_dict, meta): `state_dict` maps each key (a leading `module.`
    stripped) to a numpy array in the file's own key order and dtype
    (bfloat16 read as float32); `meta` is the checkpoint's `meta` dict ({} if
    none). Objects of classes outside the allow-list are
    `UnpickledPlaceholder` instances.

  Raises:
    FileNotFoundError: `path` does not exist.
    CheckpointFormatError: `path` is not a torch checkpoint or holds no state
      dict.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'checkpoint file not found: {path}')
  if not os.path.isfile(path):
    raise CheckpointFormatError(f'{path} is not a file, so not a PyTorch '
                                'checkpoint (.pth)')
  import torch  # pylint: disable=g-import-not-at-top
  try:
    ckpt = torch.load(path, map_location='cpu', weights_only=False,
                      pickle_module=restricted_pickle)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointFormatError(
        f'{path} is not a readable PyTorch checkpoint (.pth) file: '
        f'{type(e).__name__}: {e}') from e

  meta: Dict[str, Any] = {}
  bare = not (isinstance(ckpt, dict) and 'state_dict' in ckpt)
  if not bare:
    raw = ckpt['state_dict']
    meta = ckpt.get('meta') or {}
    if not isinstance(meta, dict):
      meta = {'meta': meta}
  else:
    raw = ckpt
  if not isinstance(raw, dict):
    raise CheckpointFormatError(
        f'{path}: expected a state dict or {{"state_dict": ...}}, got '
        f'{type(raw).__name__}')
  if not raw:
    raise CheckpointFormatError(f'{path}: the state dict is empty')
  if not all(isinstance(k, str) for k in raw):
    raise CheckpointFormatError(
        f'{path}: top-level dict is not a state dict (non-string keys) and has '
        'no "state_dict" entry')
  state: Dict[str, np.ndarray] = {}
  for key, value in raw.items():
    name = key[len('module.'):] if key.startswith('module.') else key
    if name in state:
      raise CheckpointFormatError(
          f'{path}: key {name!r} occurs twice (with and without "module.")')
    try:
      state[name] = _to_numpy(key, value, path)
    except CheckpointFormatError:
      if bare:
        raise CheckpointFormatError(
            f'{path}: no "state_dict" entry and the top level is not a bare '
            f'state dict (keys: {sorted(raw)[:10]})') from None
      raise
  return state, meta
