"""Runs a detector on an image or a folder and draws the results.

  maskrcnn-demo --checkpoint CKPT --input IMAGE_OR_DIR --out-dir DIR \
      [--config CONFIG] [--config.a.b=value] [--score-thr 0.3]

(also `python demo.py ...` in the repository, `python -m maskrcnn_jax demo`).
CKPT is an MMDetection .pth file or a checkpoint directory (from the
converter or a training run's `final`); without --config (a file or a row
name) the config stored in the checkpoint directory is used. Writes
DIR/<image stem>.png (detections above --score-thr drawn; inputs sharing a
stem, x.jpg and x.png, give x_jpg.png and x_png.png) and
DIR/predictions.json (every detection). An output that would overwrite an
input is refused before any work; images that cannot be read are skipped
and named, and the exit status is then 2. Errors are one line `error: ...`;
--debug (or MASKRCNN_JAX_DEBUG=1) shows the traceback.
"""

import argparse
import sys

from maskrcnn_jax import config as config_lib
from maskrcnn_jax import errors


def parse_args(argv):
  """(argparse namespace, overrides) of the command line."""
  p = argparse.ArgumentParser(prog='maskrcnn-demo',
                              description=__doc__.split('\n')[0])
  config_lib.add_model_arguments(p, dtype=True)
  p.add_argument('--input', required=True, help='image file or folder')
  p.add_argument('--out-dir', required=True, help='output folder')
  p.add_argument('--score-thr', type=float, default=0.3,
                 help='minimum score of drawn detections (default 0.3)')
  p.add_argument('--batch-size', type=int, default=1)
  return config_lib.parse_config_args(p, argv)


def _main(argv) -> int:
  from maskrcnn_jax import demo_lib  # pylint: disable=g-import-not-at-top
  args, overrides = parse_args(argv)
  demo_lib.run_demo(args.config, args.checkpoint, args.input, args.out_dir,
                    score_thr=args.score_thr, batch_size=args.batch_size,
                    dtype=args.dtype, overrides=overrides)
  return 0


def main(argv=None) -> int:
  """Runs the command; user errors (including unreadable images, after the
  others are done): one line `error: ...`, status 2."""
  return errors.main_guard(_main, argv)


if __name__ == '__main__':
  sys.exit(main())
