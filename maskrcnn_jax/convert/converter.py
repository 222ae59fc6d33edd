"""`convert_checkpoint`: an MMDetection `.pth` -> an inference checkpoint."""

import dataclasses
import os
from typing import Callable, Optional, Tuple

import ml_collections

from maskrcnn_jax.convert import mmdet
from maskrcnn_jax.convert import pth


@dataclasses.dataclass(frozen=True)
class ConversionResult:
  """What `convert_checkpoint` wrote.

  Attributes:
    out: absolute path of the checkpoint directory.
    class_names: the detector's class names (label order).
    num_keys: tensors in the .pth; num_converted / num_dropped of them
      mapped / dropped (num_batches_tracked).
    num_arrays: arrays in the variable tree; num_params / num_stats: values
      in 'params' / 'batch_stats'.
  """
  out: str
  class_names: Tuple[str, ...]
  num_keys: int
  num_converted: int
  num_dropped: int
  num_arrays: int
  num_params: int
  num_stats: int


def _abstract_variables(config):
  """The model's variable tree (shapes only); lazily imports the model."""
  from maskrcnn_jax.models import build  # pylint: disable=g-import-not-at-top
  return build.abstract_variables(config)


def convert_checkpoint(config: ml_collections.ConfigDict, pth_path: str,
                       out: str, *, overwrite: bool = False,
                       strict: bool = True,
                       on_plan: Optional[Callable] = None
                       ) -> ConversionResult:
  """Converts `pth_path` for the model `config` builds and writes `out`.

  The inference checkpoint stores the variables, the class names (from the
  .pth's meta, else COCO's when there are 80 classes) and the resolved
  config (so eval/demo/`Predictor` need no config afterwards).

  Args:
    config: the model's config (`config.load_config`).
    pth_path: an MMDetection 2.x/3.x `.pth` file.
    out: the checkpoint directory to write.
    overwrite: replace an existing `out`.
    strict: check every key and shape against the model built from config.
    on_plan: called as on_plan(state_dict, plan) before converting (e.g. to
      print the key mapping).

  Raises:
    FileExistsError: `out` exists and overwrite is False.
    FileNotFoundError / CheckpointFormatError: unreadable `pth_path`.
    CheckpointMismatchError: strict check failed (lists every difference).
    ValueError: class names of the meta do not fit the config.
  """
  from maskrcnn_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  if os.path.exists(out) and not overwrite:
    raise FileExistsError(f'output directory already exists: {out} '
                          '(use --overwrite)')
  state_dict, meta = pth.read_pth(pth_path)
  plan, dropped = mmdet.conversion_plan(state_dict)
  if on_plan is not None:
    on_plan(state_dict, plan)
  expected = _abstract_variables(config) if strict else None
  variables = mmdet.state_dict_to_variables(state_dict, config, expected)
  class_names = mmdet.class_names_from_meta(meta, config.model.num_classes)
  extra = {'mmdet_config': str(config.mmdet.config)}
  for k in ('mmdet_version', 'mmengine_version', 'mmcv_version'):
    if isinstance(meta.get(k), str):
      extra[k] = meta[k]
  path = checkpoint_lib.save_inference_checkpoint(
      out, variables, class_names, config.name, extra,
      source=os.path.abspath(pth_path), config=config,
      overwrite=overwrite)
  return ConversionResult(
      out=path, class_names=tuple(class_names), num_keys=len(state_dict),
      num_converted=len(plan), num_dropped=len(dropped),
      num_arrays=len(mmdet.flatten_variables(variables)),
      num_params=mmdet.count_parameters(variables, mmdet.PARAMS),
      num_stats=mmdet.count_parameters(variables, mmdet.BATCH_STATS))
