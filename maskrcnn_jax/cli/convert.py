"""Converts an MMDetection Mask R-CNN `.pth` into an inference checkpoint.

  maskrcnn-convert --config r50_fpn_1x \
      --checkpoint mask_rcnn_r50_fpn_1x_coco.pth --out checkpoints/r50_fpn_1x

(also `python -m maskrcnn_jax.convert ...`). --config is a config file or a
row name (`r50_fpn_1x`); `--config.a.b=value` overrides a field. The
checkpoint must match the model that the config builds exactly (every key,
every shape); otherwise all differences are listed and the exit status is 1.
Other errors (missing or unreadable files, class names, a config typo) are
one line `error: ...` with exit status 2; --debug (or MASKRCNN_JAX_DEBUG=1)
shows the traceback.
"""

import argparse
import sys
from typing import Optional, Sequence

from maskrcnn_jax import config as config_lib
from maskrcnn_jax import errors
from maskrcnn_jax.convert import converter
from maskrcnn_jax.convert import mmdet


def _shape(s) -> str:
  return '(' + ', '.join(str(int(d)) for d in s) + ')'


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog='maskrcnn-convert',
      description='Convert an MMDetection Mask R-CNN checkpoint (.pth) into a '
                  'maskrcnn_jax inference checkpoint directory.')
  config_lib.add_model_arguments(
      p, config_required=True,
      checkpoint_help='MMDetection .pth file (2.x or 3.x)')
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


def _main(argv: Sequence[str]) -> int:
  args, overrides = config_lib.parse_config_args(_parser(), argv)
  config = config_lib.load_config(args.config, overrides)

  def show_plan(state_dict, plan):
    by_key = {m.key: m for m in plan}
    for key in state_dict:
      m = by_key.get(key)
      if m is None:
        print(f'{key} -> (dropped)')
      else:
        print(f'{m.key} {_shape(m.torch_shape)} -> {m.flax_name} '
              f'{_shape(m.flax_shape)}')

  try:
    result = converter.convert_checkpoint(
        config, args.checkpoint, args.out, overwrite=args.overwrite,
        strict=args.strict, on_plan=show_plan if args.verbose else None)
  except mmdet.CheckpointMismatchError as e:  # every difference, status 1
    print(str(e), file=sys.stderr)
    return 1
  print(f'read {result.num_keys} keys from {args.checkpoint}: '
        f'{result.num_converted} converted, {result.num_dropped} dropped '
        '(num_batches_tracked)')
  print(f'variables: {result.num_arrays} arrays; total parameters: '
        f'{result.num_params:,} (+ {result.num_stats:,} batch statistics)')
  print('check against the model: '
        f'{"passed" if args.strict else "skipped"}')
  print(f'classes: {len(result.class_names)}')
  print(f'wrote {result.out}')
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the command; returns the exit status (see the module doc)."""
  return errors.main_guard(_main, argv)


if __name__ == '__main__':
  sys.exit(main())
