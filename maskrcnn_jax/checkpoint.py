"""Inference checkpoints (orbax) and loading detector weights.

An inference checkpoint is an orbax Composite checkpoint directory with two
items:
  * `variables`: the Flax variable tree `{'params', 'batch_stats'}` (a pytree
    of float32 arrays, StandardCheckpointHandler);
  * `meta`: JSON with `format`, `format_version`, `class_names`,
    `config_name`, `source` and any extra entries.
Orbax writes into a temporary directory and renames it when complete, so a
directory that exists is a finished checkpoint.
"""

import json
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

FORMAT_NAME = 'maskrcnn_jax.inference'
FORMAT_VERSION = 1
_RESERVED = ('format', 'format_version', 'class_names', 'config_name',
             'source')


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
                              overwrite: bool = False) -> str:
  """Writes variables and metadata atomically; returns the absolute path.

  Args:
    directory: the checkpoint directory to create.
    variables: `{'params': ..., 'batch_stats': ...}`.
    class_names: the detector's class names (label order).
    config_name: name of the config the variables belong to.
    extra_meta: further JSON-serialisable metadata (must not reuse the
      reserved keys).
    source: where the weights came from (e.g. the converted `.pth` file).
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


def load_inference_checkpoint(directory) -> Tuple[Dict[str, Any],
                                                  Dict[str, Any]]:
  """Reads a directory written by `save_inference_checkpoint`.

  Returns:
    (variables as nested dicts of numpy arrays, meta dict).

  Raises:
    FileNotFoundError: no such directory.
    ValueError: not an inference checkpoint, or another format version.
  """
  directory = os.path.abspath(os.fspath(directory))
  if not os.path.exists(directory):
    raise FileNotFoundError(f'checkpoint directory not found: {directory}')
  if not is_inference_checkpoint(directory):
    raise ValueError(
        f'{directory} is not an inference checkpoint written by '
        'save_inference_checkpoint (no "meta" and "variables" items)')
  ocp, ckptr = _checkpointer()
  meta = ckptr.restore(directory, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))['meta']
  if not isinstance(meta, dict) or meta.get('format') != FORMAT_NAME:
    raise ValueError(f'{directory}: metadata format is not {FORMAT_NAME!r}')
  if meta.get('format_version') != FORMAT_VERSION:
    raise ValueError(f'{directory}: format_version '
                     f'{meta.get("format_version")!r} is not supported '
                     f'(expected {FORMAT_VERSION})')
  variables = ckptr.restore(directory, args=ocp.args.Composite(
      variables=ocp.args.StandardRestore()))['variables']
  ckptr.close()
  return _to_numpy_tree(variables), meta


def load_detector_variables(path, config,
                            expected: Optional[Mapping[str, Any]] = None
                            ) -> Tuple[Dict[str, Any], Tuple[str, ...]]:
  """Loads detector weights from an MMDetection `.pth` or an inference dir.

  Args:
    path: an MMDetection checkpoint file (converted on the fly) or a
      directory written by `save_inference_checkpoint`.
    config: the model config.
    expected: optional tree of the model's variables (arrays or
      jax.ShapeDtypeStruct, e.g. `models.build.abstract_variables(config)`);
      when given, keys and shapes must match exactly.

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
    if len(names) != num_classes:
      raise ValueError(f'{path} has {len(names)} class names but the config '
                       f'has num_classes={num_classes}')
    if expected is not None:
      mmdet.check_variables(variables, expected, what='inference checkpoint')
    return variables, names
  try:
    state_dict, meta = pth.read_pth(path)
  except pth.CheckpointFormatError as e:
    raise pth.CheckpointFormatError(
        f'{e}\n(expected an MMDetection .pth file or a directory written by '
        'save_inference_checkpoint)') from e
  variables = mmdet.state_dict_to_variables(state_dict, config, expected)
  return variables, mmdet.class_names_from_meta(meta, num_classes)
