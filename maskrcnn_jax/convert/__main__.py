"""Converts an MMDetection Mask R-CNN `.pth` into an inference checkpoint.

  python -m maskrcnn_jax.convert --config configs/r50_fpn_1x.py \
      --checkpoint mask_rcnn_r50_fpn_1x_coco.pth --out checkpoints/r50_fpn_1x

The checkpoint must match the model that the config builds exactly (every
key, every shape); otherwise all differences are listed and the exit status
is 1. Other errors (missing or unreadable files, class names) exit with 2.
"""

import argparse
import os
import sys
from typing import Optional, Sequence

from maskrcnn_jax import errors
from maskrcnn_jax.convert import mmdet
from maskrcnn_jax.convert import pth


def _abstract_variables(config):
  """The model's variable tree (shapes only); lazily imports the model."""
  from maskrcnn_jax.models.build import abstract_variables  # pylint: disable=g-import-not-at-top
  return abstract_variables(config)


def _shape(s) -> str:
  return '(' + ', '.join(str(int(d)) for d in s) + ')'


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog='python -m maskrcnn_jax.convert',
      description='Convert an MMDetection Mask R-CNN checkpoint (.pth) into a '
                  'maskrcnn_jax inference checkpoint directory.')
  p.add_argument('--config', required=True,
                 help='config file, e.g. configs/r50_fpn_1x.py')
  p.add_argument('--checkpoint', required=True,
                 help='MMDetection .pth file (2.x or 3.x)')
  p.add_argument('--out', required=True,
                 help='output directory (must not exist unless --overwrite)')
  p.add_argument('-v', '--verbose', action='store_true',
                 help='print every "old -> new" key mapping')
  p.add_argument('--overwrite', action='store_true',
                 help='replace an existing output directory')
  p.add_argument('--no-strict', dest='strict', action='store_false',
                 help='skip the check against the model built from the '
                      'config (not recommended)')
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(argv)
  from maskrcnn_jax.checkpoint import save_inference_checkpoint  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.config import load_config  # pylint: disable=g-import-not-at-top

  def fail(msg, code=2):
    print(f'error: {msg}', file=sys.stderr)
    return code

  try:
    config = load_config(args.config)
  except (FileNotFoundError, AttributeError) as e:
    return fail(e)
  if os.path.exists(args.out) and not args.overwrite:
    return fail(f'output directory already exists: {args.out} '
                '(use --overwrite)')
  try:
    state_dict, meta = pth.read_pth(args.checkpoint)
  except (FileNotFoundError, pth.CheckpointFormatError) as e:
    return fail(e)

  plan, dropped = mmdet.conversion_plan(state_dict)
  if args.verbose:
    by_key = {m.key: m for m in plan}
    for key in state_dict:
      m = by_key.get(key)
      if m is None:
        print(f'{key} -> (dropped)')
      else:
        print(f'{m.key} {_shape(m.torch_shape)} -> {m.flax_name} '
              f'{_shape(m.flax_shape)}')

  expected = _abstract_variables(config) if args.strict else None
  try:
    variables = mmdet.state_dict_to_variables(state_dict, config, expected)
  except mmdet.CheckpointMismatchError as e:
    print(str(e), file=sys.stderr)
    return 1
  try:
    class_names = mmdet.class_names_from_meta(meta,
                                              config.model.num_classes)
  except ValueError as e:
    return fail(e)

  extra = {'mmdet_config': str(config.mmdet.config)}
  for k in ('mmdet_version', 'mmengine_version', 'mmcv_version'):
    if isinstance(meta.get(k), str):
      extra[k] = meta[k]
  out = save_inference_checkpoint(
      args.out, variables, class_names, config.name, extra,
      source=os.path.abspath(args.checkpoint), overwrite=args.overwrite,
      config=config)

  n_params = mmdet.count_parameters(variables, mmdet.PARAMS)
  n_stats = mmdet.count_parameters(variables, mmdet.BATCH_STATS)
  n_vars = len(mmdet.flatten_variables(variables))
  print(f'read {len(state_dict)} keys from {args.checkpoint}: '
        f'{len(plan)} converted, {len(dropped)} dropped '
        '(num_batches_tracked)')
  print(f'variables: {n_vars} arrays; total parameters: {n_params:,} '
        f'(+ {n_stats:,} batch statistics)')
  print(f'check against the model: {"passed" if args.strict else "skipped"}')
  print(f'classes: {len(class_names)}')
  print(f'wrote {out}')
  return 0


if __name__ == '__main__':
  sys.exit(errors.main_guard(main))
