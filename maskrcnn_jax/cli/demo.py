"""Runs a detector on an image or a folder and draws the results.

  maskrcnn-demo --checkpoint CKPT --input IMAGE_OR_DIR --out-dir DIR \
      [--config CONFIG] [--config.a.b=value] [--score-thr 0.3]

(also `python demo.py ...` in the repository, `python -m maskrcnn_jax demo`).
CKPT is an MMDetection .pth file or a checkpoint directory (from the
converter or a training run's `final`); without --config (a file or a row
name) the config stored in the checkpoint directory is used. Writes
DIR/<image stem>.png (detections above --score-thr drawn) and
DIR/predictions.json (every detection).
"""

import argparse
import sys

from maskrcnn_jax import config as config_lib


def parse_args(argv):
  """(argparse namespace, overrides) of the command line."""
  argv, overrides = config_lib.split_config_flags(argv)
  p = argparse.ArgumentParser(prog='maskrcnn-demo',
                              description=__doc__.split('\n')[0])
  p.add_argument('--config', default=None,
                 help='config file or row name (default: the config stored '
                      'in the checkpoint directory)')
  p.add_argument('--checkpoint', required=True,
                 help='MMDetection .pth or checkpoint directory')
  p.add_argument('--input', required=True, help='image file or folder')
  p.add_argument('--out-dir', required=True, help='output folder')
  p.add_argument('--score-thr', type=float, default=0.3,
                 help='minimum score of drawn detections (default 0.3)')
  p.add_argument('--batch-size', type=int, default=1)
  p.add_argument('--dtype', default=None,
                 choices=['float32', 'bfloat16', 'float16'],
                 help='compute dtype (default: the config\'s)')
  config_lib.add_override_argument(p)
  args = p.parse_args(argv)
  return args, overrides + args.config_override


def main(argv=None) -> int:
  from maskrcnn_jax import demo_lib  # pylint: disable=g-import-not-at-top
  try:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    demo_lib.run_demo(args.config, args.checkpoint, args.input,
                      args.out_dir, score_thr=args.score_thr,
                      batch_size=args.batch_size, dtype=args.dtype,
                      overrides=overrides)
  except (FileNotFoundError, ValueError, KeyError) as e:
    print(f'error: {e.args[0] if isinstance(e, KeyError) else e}',
          file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
