"""Inference checkpoints (orbax) and loading detector weights.

An inference checkpoint is an orbax Composite checkpoint directory with two
items:
  * `variables`: the Flax variable tree `{'params', 'batch_stats'}` (a pytree
    of float32 arrays, StandardCheckpointHandler);
  * `meta`: JSON with `format`, `format_version`, `class_names`,
    `config_name`, `config` (the resolved config as a dict, so the
    checkpoint runs with no config file and no repeated overrides),
    `source`, `architecture` (the config fields that decide the weights'
    meaning: backbone style/depth/groups, widths, input normalisation; see
    `ARCHITECTURE_KEYS`) and any extra entries.
Loading compares the stored architecture with the requested config, so a
same-shape mismatch (pytorch-style weights under a caffe-style config) is an
error naming both configs, as is a key/shape mismatch.
Orbax writes into a temporary directory and renames it when complete, so a
directory that exists is a finished checkpoint.
"""

import json
import os
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

FORMAT_NAME = 'maskrcnn_jax.inference'
FORMAT_VERSION = 1
_RESERVED = ('format', 'format_version', 'class_names', 'config_name',
             'config', 'source', 'architecture')

# Config fields stored with a checkpoint and compared when it is loaded.
ARCHITECTURE_KEYS = (
    'model.num_classes', 'model.backbone.depth', 'model.backbone.groups',
    'model.backbone.base_width', 'model.backbone.style',
    'model.backbone.base_channels', 'model.backbone.norm',
    'model.neck.out_channels', 'model.roi.fc_channels',
    'model.roi.num_shared_fcs', 'model.roi.num_mask_convs',
    'model.roi.mask_channels', 'input.mean', 'input.std', 'input.bgr_to_rgb')


class CheckpointConfigError(ValueError):
  """A checkpoint was saved for another architecture than the config's."""


def _json_value(v):
  if isinstance(v, (tuple, list)):
    return [_json_value(x) for x in v]
  if hasattr(v, 'to_dict'):
    return _json_value(v.to_dict())
  if isinstance(v, dict):
    return {str(k): _json_value(x) for k, x in v.items()}
  return v


def architecture(config) -> Dict[str, Any]:
  """The `ARCHITECTURE_KEYS` of `config` that it has, as JSON values."""
  out = {}
  for key in ARCHITECTURE_KEYS:
    node = config
    for name in key.split('.'):
      try:
        node = node[name]
      except (KeyError, TypeError, AttributeError):
        break
    else:
      out[key] = _json_value(node)
  return out


def check_architecture(meta: Mapping[str, Any], config, path,
                       ignore: Sequence[str] = ()) -> None:
  """Raises CheckpointConfigError if `meta`'s architecture is not config's.

  The stored `architecture`, else that of the stored `config` (checkpoints
  written before architectures were stored); nothing to compare: no check.
  `ignore`: keys not compared (e.g. model.num_classes when fine-tuning).
  """
  if not isinstance(meta, Mapping):
    return
  stored = meta.get('architecture')
  if not isinstance(stored, Mapping) and isinstance(meta.get('config'),
                                                    Mapping):
    stored = architecture(meta['config'])
  if not isinstance(stored, Mapping):
    return
  current = architecture(config)
  differ = [k for k in current if k in stored and k not in ignore and
            stored[k] != current[k]]
  if differ:
    shown = '; '.join(f'{k}: checkpoint {stored[k]!r} vs config '
                      f'{current[k]!r}' for k in differ[:4])
    raise CheckpointConfigError(
        f'{path} was saved for config {meta.get("config_name")!r}, not for '
        f'the requested config {config.name!r}: {shown}')


def _mismatch_with_names(e: Exception, path, stored_name, config):
  """Prefixes a key/shape mismatch error with both config names."""
  saved = f' (saved for config {stored_name!r})' if stored_name else ''
  e.args = (f'{path}{saved} does not fit the requested config '
            f'{config.name!r}: {e}',) + tuple(e.args[1:])
  return e


def _to_numpy_tree(tree):
  if isinstance(tree, Mapping):
    return {str(k): _to_numpy_tree(v) for k, v in tree.items()}
  return np.asarray(tree)


def _checkpointer():
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp, ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def save_inference_checkpoint(directory, variables: Mapping[str, Any],
                              class_names: Sequence[str], config_name: str,
                              extra_meta: Optional[Mapping[str, Any]] = None,
                              *, source: Optional[str] = None,
                              config=None, overwrite: bool = False) -> str:
  """Writes variables and metadata atomically; returns the absolute path.

  Args:
    directory: the checkpoint directory to create.
    variables: `{'params': ..., 'batch_stats': ...}`.
    class_names: the detector's class names (label order).
    config_name: name of the config the variables belong to.
    extra_meta: further JSON-serialisable metadata (must not reuse the
      reserved keys).
    source: where the weights came from (e.g. the converted `.pth` file).
    config: the resolved ConfigDict (stored; `load_checkpoint_config` reads
      it back), with its `architecture` (checked when the checkpoint is
      loaded).
    overwrite: replace an existing directory.

  Raises:
    FileExistsError: `directory` exists and overwrite is False.
    ValueError: extra_meta reuses a reserved key or is not JSON-serialisable.
  """
  directory = os.path.abspath(os.fspath(directory))
  if os.path.exists(directory) and not overwrite:
    raise FileExistsError(f'checkpoint directory already exists: {directory}')
  meta: Dict[str, Any] = {
      'format': FORMAT_NAME,
      'format_version': FORMAT_VERSION,
      'class_names': [str(c) for c in class_names],
      'config_name': str(config_name),
      'source': None if source is None else str(source),
  }
  if config is not None:
    from maskrcnn_jax import config as config_lib  # pylint: disable=g-import-not-at-top
    meta['config'] = config_lib.config_to_dict(config)
    meta['architecture'] = architecture(config)
  for k, v in (extra_meta or {}).items():
    if k in _RESERVED:
      raise ValueError(f'extra_meta may not set the reserved key {k!r}')
    meta[k] = v
  try:
    json.dumps(meta)
  except TypeError as e:
    raise ValueError(f'metadata is not JSON-serialisable: {e}') from e
  tree = _to_numpy_tree(variables)
  ocp, ckptr = _checkpointer()
  ckptr.save(directory,
             args=ocp.args.Composite(
                 variables=ocp.args.StandardSave(tree),
                 meta=ocp.args.JsonSave(meta)),
             force=overwrite)
  ckptr.close()
  return directory


def is_inference_checkpoint(directory) -> bool:
  """Whether `directory` looks like a save_inference_checkpoint output."""
  directory = os.fspath(directory)
  return (os.path.isdir(os.path.join(directory, 'meta')) and
          os.path.isdir(os.path.join(directory, 'variables')))


def _check_directory(directory) -> str:
  directory = os.path.abspath(os.fspath(directory))
  if not os.path.exists(directory):
    raise FileNotFoundError(f'checkpoint directory not found: {directory}')
  if not is_inference_checkpoint(directory):
    raise ValueError(
        f'{directory} is not an inference checkpoint written by '
        'save_inference_checkpoint (no "meta" and "variables" items)')
  return directory


def read_meta(directory) -> Dict[str, Any]:
  """The metadata of an inference checkpoint (no variables are read).

  Raises:
    FileNotFoundError: no such directory.
    ValueError: not an inference checkpoint, or another format version.
  """
  directory = _check_directory(directory)
  ocp, ckptr = _checkpointer()
  meta = ckptr.restore(directory, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))['meta']
  ckptr.close()
  if not isinstance(meta, dict) or meta.get('format') != FORMAT_NAME:
    raise ValueError(f'{directory}: metadata format is not {FORMAT_NAME!r}')
  if meta.get('format_version') != FORMAT_VERSION:
    raise ValueError(f'{directory}: format_version '
                     f'{meta.get("format_version")!r} is not supported '
                     f'(expected {FORMAT_VERSION})')
  return meta


def load_inference_checkpoint(directory) -> Tuple[Dict[str, Any],
                                                  Dict[str, Any]]:
  """Reads a directory written by `save_inference_checkpoint`.

  Returns:
    (variables as nested dicts of numpy arrays, meta dict).

  Raises:
    FileNotFoundError: no such directory.
    ValueError: not an inference checkpoint, or another format version.
  """
  directory = _check_directory(directory)
  meta = read_meta(directory)
  ocp, ckptr = _checkpointer()
  variables = ckptr.restore(directory, args=ocp.args.Composite(
      variables=ocp.args.StandardRestore()))['variables']
  ckptr.close()
  return _to_numpy_tree(variables), meta


def load_checkpoint_config(path, overrides: Sequence[str] = ()):
  """The config stored in an inference checkpoint directory (overrides
  applied, locked), or None for a `.pth` or a checkpoint without one.

  Raises:
    FileNotFoundError / ValueError: as `read_meta`, for a directory.
  """
  path = os.fspath(path)
  if not os.path.isdir(path):
    if not os.path.exists(path):
      raise FileNotFoundError(f'checkpoint not found: {path}')
    return None
  stored = read_meta(path).get('config')
  if stored is None:
    return None
  from maskrcnn_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.config_from_dict(stored, lock=False)
  config_lib.apply_overrides(config, overrides)
  config.lock()
  return config


def resolve_config(config_path: Optional[str], checkpoint,
                   overrides: Sequence[str] = ()):
  """The config of a command: `config_path` (file or row name) if given,
  else the one stored in the checkpoint directory; overrides applied.

  Raises:
    ValueError: no config_path and the checkpoint stores no config (a .pth,
      or a directory written before configs were stored).
  """
  from maskrcnn_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  if config_path:
    return config_lib.load_config(config_path, overrides)
  config = load_checkpoint_config(checkpoint, overrides)
  if config is None:
    raise ValueError(f'{checkpoint} stores no config (an MMDetection .pth '
                     'or an older checkpoint directory); pass --config '
                     '(a config file or a row name such as r50_fpn_1x)')
  return config


def load_detector_variables(path, config,
                            expected: Optional[Mapping[str, Any]] = None,
                            check_classes: bool = True
                            ) -> Tuple[Dict[str, Any], Tuple[str, ...]]:
  """Loads detector weights from an MMDetection `.pth` or an inference dir.

  The one loader of "a .pth or a converted directory": the predictor, the
  training initialisation (`train.init_from`) and the notebooks use it.

  Args:
    path: an MMDetection checkpoint file (converted on the fly) or a
      directory written by `save_inference_checkpoint`.
    config: the model config.
    expected: optional tree of the model's variables (arrays or
      jax.ShapeDtypeStruct, e.g. `models.build.abstract_variables(config)`);
      when given, keys and shapes must match exactly.
    check_classes: require `config.model.num_classes` classes (False when
      fine-tuning onto another class count: the class names are then those
      of the checkpoint, or () where a .pth's meta has none that fit).

  Returns:
    (variables, class_names).

  Raises:
    FileNotFoundError: `path` does not exist.
    CheckpointFormatError / ValueError: `path` is neither kind of checkpoint,
      or its class count differs from `config.model.num_classes`.
    CheckpointMismatchError: strict check failed.
  """
  from maskrcnn_jax.convert import mmdet  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.convert import pth  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  num_classes = int(config.model.num_classes)
  if not os.path.exists(path):
    raise FileNotFoundError(f'checkpoint not found: {path}')
  if os.path.isdir(path):
    if not is_inference_checkpoint(path):
      raise ValueError(
          f'{path} is a directory but not an inference checkpoint written by '
          'save_inference_checkpoint; expected that or an MMDetection .pth '
          'file')
    variables, meta = load_inference_checkpoint(path)
    names = tuple(meta.get('class_names') or ())
    if check_classes and len(names) != num_classes:
      raise ValueError(f'{path} has {len(names)} class names but the config '
                       f'has num_classes={num_classes}')
    check_architecture(meta, config, path,
                       ignore=() if check_classes else ('model.num_classes',))
    if expected is not None:
      try:
        mmdet.check_variables(variables, expected,
                              what='inference checkpoint')
      except mmdet.CheckpointMismatchError as e:
        raise _mismatch_with_names(e, path, meta.get('config_name'), config)
    return variables, names
  try:
    state_dict, meta = pth.read_pth(path)
  except pth.CheckpointFormatError as e:
    raise pth.CheckpointFormatError(
        f'{e}\n(expected an MMDetection .pth file or a directory written by '
        'save_inference_checkpoint)') from e
  stored_name = _check_pth_backbone(meta, config, path)
  try:
    variables = mmdet.state_dict_to_variables(state_dict, config, expected)
  except mmdet.CheckpointMismatchError as e:
    raise _mismatch_with_names(e, path, stored_name, config)
  if not check_classes:
    try:
      names = mmdet.class_names_from_meta(meta, num_classes)
    except ValueError:
      names = ()
    return variables, tuple(names)
  return variables, mmdet.class_names_from_meta(meta, num_classes)


def _check_pth_backbone(meta, config, path) -> Optional[str]:
  """Compares the backbone of an MMDetection `meta['config']` text (when
  the .pth has one) with `config`; returns the stored config's file name."""
  text = meta.get('config') if isinstance(meta, Mapping) else None
  if not isinstance(text, str):
    return None
  name = None
  for key in ('filename', 'cfg_name'):
    if isinstance(meta.get(key), str):
      name = os.path.basename(meta[key])
  at = text.find('backbone=dict(')
  if at < 0:
    at = text.find("backbone = dict(")
  if at < 0:
    return name
  block = text[at:at + 800]
  b = config.model.backbone
  found = {}
  for field, pattern in (('style', r"style\s*=\s*'(\w+)'"),
                         ('depth', r'depth\s*=\s*(\d+)'),
                         ('groups', r'groups\s*=\s*(\d+)')):
    m = re.search(pattern, block)
    if m:
      found[field] = m.group(1)
  differ = [f'model.backbone.{k}: checkpoint {v!r} vs config '
            f'{str(b[k])!r}' for k, v in found.items() if str(b[k]) != v]
  if differ:
    raise CheckpointConfigError(
        f'{path} was trained with another backbone (its config'
        f'{" " + repr(name) if name else ""}) than the requested config '
        f'{config.name!r}: ' + '; '.join(differ))
  return name
