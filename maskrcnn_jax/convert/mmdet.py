"""MMDetection state dicts <-> Flax variables of `maskrcnn_jax`.

The Flax variable tree is `{'params': ..., 'batch_stats': ...}` whose paths
are the MMDetection state-dict keys split on '.', with these leaf rules:

  * conv `weight` (O, I, kh, kw)      -> params `kernel` (kh, kw, I, O)
    (grouped convs too: XLA's feature_group_count uses PyTorch's layout);
  * Linear `weight` (out, in)          -> params `kernel` (in, out) = w.T;
  * `roi_head.bbox_head.shared_fcs.0.weight` reads a (C, R, R) flatten in
    PyTorch and an NHWC (R, R, C) flatten here:
    kernel = w.reshape(out, C, R, R).transpose(0, 2, 3, 1).reshape(out, -1).T
    with C = config.model.neck.out_channels, R = config.model.roi.box_roi_size;
  * `roi_head.mask_head.upsample.weight` (ConvTranspose2d, [in, out, kh, kw])
    -> params `kernel` (in, kh, kw, out) = w.transpose(0, 2, 3, 1);
  * `bias` -> params `bias`;
  * BatchNorm (a module with `running_mean`/`running_var`): weight -> params
    `scale`, bias -> params `bias`, running_mean -> batch_stats `mean`,
    running_var -> batch_stats `var`; `num_batches_tracked` is dropped;
  * any other 1-D `weight` (a norm without running stats) -> params `scale`.

Every array is returned as float32 numpy.
"""

import dataclasses
import logging
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

PARAMS = 'params'
BATCH_STATS = 'batch_stats'
SHARED_FC0_KEY = 'roi_head.bbox_head.shared_fcs.0.weight'
UPSAMPLE_KEY = 'roi_head.mask_head.upsample.weight'
NUM_BATCHES_TRACKED = 'num_batches_tracked'

# Conversion rules of a leaf.
CONV, LINEAR, SHARED_FC0, DECONV, COPY = (
    'conv', 'linear', 'shared_fc0', 'deconv', 'copy')

Shape = Tuple[int, ...]


class CheckpointMismatchError(ValueError):
  """A checkpoint's keys or shapes differ from the model's variables.

  Attributes:
    missing: MMDetection keys the model has and the checkpoint lacks.
    unexpected: checkpoint keys the model does not have.
    mismatched: (key, checkpoint shape, model shape), PyTorch layouts.
  """

  def __init__(self, missing: Sequence[str] = (),
               unexpected: Sequence[str] = (),
               mismatched: Sequence[Tuple[str, Shape, Shape]] = (),
               what: str = 'checkpoint'):
    self.missing = list(missing)
    self.unexpected = list(unexpected)
    self.mismatched = list(mismatched)
    lines = [
        f'{what} does not match the model: {len(self.missing)} missing, '
        f'{len(self.unexpected)} unexpected, {len(self.mismatched)} with a '
        'different shape (MMDetection key names, PyTorch layouts)']
    if self.missing:
      lines.append(f'missing keys (in the model, not in the {what}):')
      lines += [f'  {k}' for k in self.missing]
    if self.unexpected:
      lines.append(f'unexpected keys (in the {what}, not in the model):')
      lines += [f'  {k}' for k in self.unexpected]
    if self.mismatched:
      lines.append(f'shape mismatches ({what} vs model):')
      lines += [f'  {k}: {what} {_fmt(a)} vs model {_fmt(b)}'
                for k, a, b in self.mismatched]
    super().__init__('\n'.join(lines))


def _fmt(shape) -> str:
  return '(' + ', '.join(str(int(d)) for d in shape) + ')'


@dataclasses.dataclass(frozen=True)
class KeyMapping:
  """How one state-dict entry becomes one Flax variable."""
  key: str                 # MMDetection state-dict key
  collection: str          # 'params' | 'batch_stats'
  path: Tuple[str, ...]    # path inside the collection
  rule: str                # CONV | LINEAR | SHARED_FC0 | DECONV | COPY
  torch_shape: Shape
  flax_shape: Shape

  @property
  def flax_name(self) -> str:
    return '/'.join((self.collection,) + self.path)


# --------------------------------------------------------------------------
# Per-leaf rules.
# --------------------------------------------------------------------------


def _roi_c_r(config) -> Tuple[int, int]:
  return (int(config.model.neck.out_channels),
          int(config.model.roi.box_roi_size))


def _flax_shape(rule: str, shape: Shape) -> Shape:
  if rule == CONV:
    return tuple(shape[2:]) + (shape[1], shape[0])
  if rule in (LINEAR, SHARED_FC0):
    return (shape[1], shape[0])
  if rule == DECONV:
    return (shape[0],) + tuple(shape[2:]) + (shape[1],)
  return tuple(shape)


def _torch_shape(rule: str, shape: Shape) -> Shape:
  """Inverse of `_flax_shape`."""
  n = len(shape)
  if rule == CONV:
    return (shape[-1], shape[-2]) + tuple(shape[:-2])
  if rule in (LINEAR, SHARED_FC0):
    return (shape[1], shape[0])
  if rule == DECONV:
    return (shape[0], shape[-1]) + tuple(shape[1:n - 1])
  return tuple(shape)


def _weight_rule(key: str, ndim: int) -> str:
  if ndim >= 3:
    return DECONV if key == UPSAMPLE_KEY else CONV
  if ndim == 2:
    return SHARED_FC0 if key == SHARED_FC0_KEY else LINEAR
  return COPY


def _to_flax(rule: str, w: np.ndarray, key: str, config) -> np.ndarray:
  w = np.asarray(w, dtype=np.float32)
  if rule == CONV:
    nd = w.ndim
    return np.ascontiguousarray(w.transpose(*range(2, nd), 1, 0))
  if rule == LINEAR:
    return np.ascontiguousarray(w.T)
  if rule == SHARED_FC0:
    c, r = _roi_c_r(config)
    out, fan_in = w.shape
    if fan_in != c * r * r:
      raise CheckpointMismatchError(mismatched=[
          (key, w.shape, (out, c * r * r))])
    return np.ascontiguousarray(
        w.reshape(out, c, r, r).transpose(0, 2, 3, 1).reshape(out, -1).T)
  if rule == DECONV:
    return np.ascontiguousarray(w.transpose(0, *range(2, w.ndim), 1))
  return np.array(w, dtype=np.float32, copy=True)


def _to_torch(rule: str, k: np.ndarray, key: str, config) -> np.ndarray:
  k = np.asarray(k, dtype=np.float32)
  if rule == CONV:
    nd = k.ndim
    return np.ascontiguousarray(k.transpose(nd - 1, nd - 2, *range(nd - 2)))
  if rule == LINEAR:
    return np.ascontiguousarray(k.T)
  if rule == SHARED_FC0:
    c, r = _roi_c_r(config)
    fan_in, out = k.shape
    if fan_in != c * r * r:
      raise ValueError(f'{key}: kernel {k.shape} does not read a '
                       f'{r}x{r}x{c} RoI feature')
    return np.ascontiguousarray(
        k.T.reshape(out, r, r, c).transpose(0, 3, 1, 2).reshape(out, -1))
  if rule == DECONV:
    nd = k.ndim
    return np.ascontiguousarray(k.transpose(0, nd - 1, *range(1, nd - 1)))
  return np.array(k, dtype=np.float32, copy=True)


def _bn_modules(keys) -> set:
  out = set()
  for k in keys:
    module, _, leaf = k.rpartition('.')
    if leaf in ('running_mean', 'running_var'):
      out.add(module)
  return out


def map_key(key: str, shape: Shape, bn_modules=frozenset()
            ) -> Optional[KeyMapping]:
  """The Flax variable of state-dict entry `key` (None: dropped)."""
  shape = tuple(int(d) for d in shape)
  module, _, leaf = key.rpartition('.')
  mpath = tuple(module.split('.')) if module else ()
  if leaf == NUM_BATCHES_TRACKED:
    return None
  if module in bn_modules:
    target = {'weight': (PARAMS, 'scale'), 'bias': (PARAMS, 'bias'),
              'running_mean': (BATCH_STATS, 'mean'),
              'running_var': (BATCH_STATS, 'var')}.get(leaf, (PARAMS, leaf))
    return KeyMapping(key, target[0], mpath + (target[1],), COPY, shape, shape)
  if leaf == 'weight':
    rule = _weight_rule(key, len(shape))
    name = 'scale' if rule == COPY and len(shape) == 1 else (
        'kernel' if rule != COPY else leaf)
    return KeyMapping(key, PARAMS, mpath + (name,), rule, shape,
                      _flax_shape(rule, shape))
  if leaf in ('running_mean', 'running_var'):  # unreachable (bn_modules)
    name = 'mean' if leaf == 'running_mean' else 'var'
    return KeyMapping(key, BATCH_STATS, mpath + (name,), COPY, shape, shape)
  return KeyMapping(key, PARAMS, mpath + (leaf,), COPY, shape, shape)


def inverse_map(collection: str, path: Sequence[str], flax_shape: Shape
                ) -> KeyMapping:
  """The state-dict entry of Flax variable `collection/path`."""
  path = tuple(str(p) for p in path)
  flax_shape = tuple(int(d) for d in flax_shape)
  module, leaf = '.'.join(path[:-1]), path[-1]

  def key_of(name):
    return f'{module}.{name}' if module else name

  if collection == BATCH_STATS:
    name = {'mean': 'running_mean', 'var': 'running_var'}.get(leaf, leaf)
    key = key_of(name)
    return KeyMapping(key, collection, path, COPY, flax_shape, flax_shape)
  if leaf == 'kernel':
    key = key_of('weight')
    nd = len(flax_shape)
    if nd >= 3:
      rule = DECONV if key == UPSAMPLE_KEY else CONV
    elif nd == 2:
      rule = SHARED_FC0 if key == SHARED_FC0_KEY else LINEAR
    else:
      rule = COPY
    return KeyMapping(key, collection, path, rule,
                      _torch_shape(rule, flax_shape), flax_shape)
  name = 'weight' if leaf == 'scale' else leaf
  return KeyMapping(key_of(name), collection, path, COPY, flax_shape,
                    flax_shape)


def conversion_plan(state_dict: Mapping[str, Any]
                    ) -> Tuple[List[KeyMapping], List[str]]:
  """(mappings in state-dict order, dropped keys) of a state dict."""
  bn = _bn_modules(state_dict.keys())
  plan, dropped = [], []
  for key, value in state_dict.items():
    m = map_key(key, np.shape(value), bn)
    if m is None:
      dropped.append(key)
    else:
      plan.append(m)
  return plan, dropped


# --------------------------------------------------------------------------
# Trees.
# --------------------------------------------------------------------------


def flatten_variables(tree: Mapping[str, Any]) -> Dict[Tuple[str, ...], Any]:
  """{(collection, *path): leaf} of a nested mapping (dict or FrozenDict)."""
  out = {}

  def rec(node, prefix):
    if isinstance(node, Mapping):
      for k, v in node.items():
        rec(v, prefix + (str(k),))
    else:
      out[prefix] = node
  rec(tree, ())
  return out


def _set_path(tree: dict, path: Sequence[str], value) -> None:
  node = tree
  for p in path[:-1]:
    node = node.setdefault(p, {})
  node[path[-1]] = value


def _natural_key(s: str):
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', s)]


def _compare(produced: Mapping[Tuple[str, ...], KeyMapping],
             expected: Mapping[str, Any], what: str) -> None:
  """Raises CheckpointMismatchError unless paths and shapes agree."""
  exp = {p: tuple(int(d) for d in np.shape(v))
         for p, v in flatten_variables(expected).items()}
  missing, unexpected, mismatched = [], [], []
  for p, shape in exp.items():
    if p not in produced:
      missing.append(inverse_map(p[0], p[1:], shape).key)
  for p, m in produced.items():
    if p not in exp:
      unexpected.append(m.key)
    else:
      want = inverse_map(p[0], p[1:], exp[p]).torch_shape
      if tuple(m.torch_shape) != tuple(want):
        mismatched.append((m.key, m.torch_shape, want))
  if missing or unexpected or mismatched:
    raise CheckpointMismatchError(sorted(missing, key=_natural_key),
                                  unexpected, mismatched, what=what)


def check_variables(variables: Mapping[str, Any], expected: Mapping[str, Any],
                    what: str = 'checkpoint') -> None:
  """Strict structure/shape check of Flax variables against `expected`."""
  produced = {}
  for p, v in flatten_variables(variables).items():
    produced[p] = inverse_map(p[0], p[1:], np.shape(v))
  _compare(produced, expected, what)


def state_dict_to_variables(state_dict: Mapping[str, Any], config,
                            expected: Optional[Mapping[str, Any]] = None
                            ) -> Dict[str, Dict[str, Any]]:
  """Converts an MMDetection state dict to `{'params', 'batch_stats'}`.

  Args:
    state_dict: key -> array (numpy or anything `np.asarray` accepts), e.g.
      from `read_pth`.
    config: the model config (`model.neck.out_channels`,
      `model.roi.box_roi_size` define the shared_fcs.0 permutation).
    expected: optional tree of the model's variables (arrays or
      jax.ShapeDtypeStruct). When given, the conversion is strict.

  Returns:
    Nested dicts of float32 numpy arrays, in state-dict order.

  Raises:
    CheckpointMismatchError: (strict mode) keys missing, unexpected or of
      another shape, all listed; or shared_fcs.0 does not fit the config.
  """
  plan, _ = conversion_plan(state_dict)
  produced = {(m.collection,) + m.path: m for m in plan}
  if expected is not None:
    _compare(produced, expected, 'checkpoint')
  variables: Dict[str, Dict[str, Any]] = {}
  for m in plan:
    value = _to_flax(m.rule, state_dict[m.key], m.key, config)
    _set_path(variables.setdefault(m.collection, {}), m.path, value)
  if expected is not None:
    for col in expected:
      variables.setdefault(col, {})
  ordered = {c: variables[c] for c in (PARAMS, BATCH_STATS) if c in variables}
  ordered.update({c: v for c, v in variables.items() if c not in ordered})
  return ordered


_LEAF_ORDER = {'weight': 0, 'bias': 1, 'running_mean': 2, 'running_var': 3,
               NUM_BATCHES_TRACKED: 4}


def variables_to_state_dict(variables: Mapping[str, Any], config,
                            include_num_batches_tracked: bool = True
                            ) -> Dict[str, np.ndarray]:
  """Inverse of `state_dict_to_variables` (PyTorch layouts, float32).

  Module order follows the params tree; inside a module PyTorch's order
  (weight, bias, running_mean, running_var, num_batches_tracked). BatchNorm
  modules get an int64 `num_batches_tracked` of 0 unless disabled.
  """
  params = variables.get(PARAMS, {}) or {}
  stats = variables.get(BATCH_STATS, {}) or {}
  out: Dict[str, np.ndarray] = {}

  def emit_module(pnode, bnode, prefix):
    entries = []
    for col, node in ((PARAMS, pnode), (BATCH_STATS, bnode)):
      for name, leaf in node.items():
        if isinstance(leaf, Mapping):
          continue
        m = inverse_map(col, prefix + (str(name),), np.shape(leaf))
        entries.append((m, leaf))
    entries.sort(key=lambda e: _LEAF_ORDER.get(e[0].key.rpartition('.')[2], 5))
    for m, leaf in entries:
      out[m.key] = _to_torch(m.rule, np.asarray(leaf), m.key, config)
    if include_num_batches_tracked and any(
        m.collection == BATCH_STATS and m.path[-1] == 'mean'
        for m, _ in entries):
      module = '.'.join(prefix)
      out[f'{module}.{NUM_BATCHES_TRACKED}' if module else
          NUM_BATCHES_TRACKED] = np.zeros((), np.int64)

  def walk(pnode, bnode, prefix):
    pnode = pnode if isinstance(pnode, Mapping) else {}
    bnode = bnode if isinstance(bnode, Mapping) else {}
    emit_module(pnode, bnode, prefix)
    children = [k for k, v in pnode.items() if isinstance(v, Mapping)]
    children += [k for k, v in bnode.items()
                 if isinstance(v, Mapping) and k not in pnode]
    for k in children:
      walk(pnode.get(k), bnode.get(k), prefix + (str(k),))

  walk(params, stats, ())
  return out


def count_parameters(variables: Mapping[str, Any],
                     collection: str = PARAMS) -> int:
  """Number of values in one collection."""
  return int(sum(int(np.prod(np.shape(v))) for v in
                 flatten_variables(variables.get(collection, {}) or {}).values()))


# --------------------------------------------------------------------------
# ImageNet backbone checkpoints.
# --------------------------------------------------------------------------


def _backbone_subtree(expected: Mapping[str, Any]) -> Dict[str, Any]:
  """Accepts a full variable tree or its backbone subtree."""
  params = expected.get(PARAMS, {})
  if isinstance(params, Mapping) and 'backbone' in params:
    return {c: {'backbone': v['backbone']} for c, v in expected.items()
            if isinstance(v, Mapping) and 'backbone' in v}
  return {c: {'backbone': v} for c, v in expected.items()}


def backbone_state_dict_to_variables(
    state_dict: Mapping[str, Any], config,
    expected_backbone: Optional[Mapping[str, Any]] = None, *,
    ignored: Optional[List[str]] = None) -> Dict[str, Dict[str, Any]]:
  """Converts an ImageNet backbone checkpoint to the `backbone` subtree.

  Accepts torchvision ResNet keys (`conv1.weight`, `bn1.*`, `layer1.0...`;
  `fc.*` is ignored) and OpenMMLab ResNeXt / MSRA caffe `.pth` files in
  MMDetection ResNet key names, optionally prefixed with `backbone.`.

  Args:
    state_dict: key -> array.
    config: the model config.
    expected_backbone: optional `{'params': ..., 'batch_stats': ...}` of the
      backbone alone, or of the whole model (its `backbone` subtrees are
      used). When given, the conversion is strict.
    ignored: optional list that receives the ignored keys (`fc.*`).

  Returns:
    `{'params': <backbone params>, 'batch_stats': <backbone stats>}`.

  Raises:
    CheckpointMismatchError: strict mode, keys named `backbone.<key>`.
  """
  sd, skipped = {}, []
  for key, value in state_dict.items():
    name = key[len('backbone.'):] if key.startswith('backbone.') else key
    if name.startswith('fc.'):
      skipped.append(key)
      continue
    sd['backbone.' + name] = value
  if skipped:
    logging.getLogger(__name__).info(
        'ignored %d classifier keys of the backbone checkpoint: %s',
        len(skipped), ', '.join(skipped))
  if ignored is not None:
    ignored.extend(skipped)
  exp = None if expected_backbone is None else _backbone_subtree(
      expected_backbone)
  variables = state_dict_to_variables(sd, config, exp)
  return {c: v.get('backbone', {}) for c, v in variables.items()}


# --------------------------------------------------------------------------
# Class names.
# --------------------------------------------------------------------------


def class_names_from_meta(meta: Optional[Mapping[str, Any]],
                          num_classes: int) -> Tuple[str, ...]:
  """Class names of a checkpoint's `meta` (3.x or 2.x layout).

  3.x: `meta['dataset_meta']['classes']`; 2.x: `meta['CLASSES']`. Without
  either, COCO's 80 names when `num_classes == 80`.

  Raises:
    ValueError: no names and num_classes != 80, or a count that differs
      from num_classes.
  """
  names = None
  meta = meta if isinstance(meta, Mapping) else {}
  dataset_meta = meta.get('dataset_meta')
  if isinstance(dataset_meta, Mapping) and dataset_meta.get('classes'):
    names, where = dataset_meta['classes'], "meta['dataset_meta']['classes']"
  elif meta.get('CLASSES'):
    names, where = meta['CLASSES'], "meta['CLASSES']"
  if names is None:
    if int(num_classes) == 80:
      from maskrcnn_jax.data.coco_classes import COCO_CLASSES  # pylint: disable=g-import-not-at-top
      return tuple(COCO_CLASSES)
    raise ValueError(
        f'the checkpoint names no classes (no meta.dataset_meta.classes or '
        f'meta.CLASSES) and num_classes={num_classes} is not COCO\'s 80')
  if isinstance(names, str):
    names = (names,)
  try:
    names = tuple(str(n) for n in names)
  except TypeError as e:
    raise ValueError(f'{where} is not a sequence of names: {names!r}') from e
  if len(names) != int(num_classes):
    raise ValueError(f'{where} has {len(names)} classes but the config has '
                     f'num_classes={num_classes}')
  return names
