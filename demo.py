"""Runs a detector on an image or a folder and draws the results.

  python demo.py --config configs/r50_fpn_1x.py --checkpoint CKPT \
      --input IMAGE_OR_DIR --out-dir DIR [--score-thr 0.3]

CKPT is an MMDetection .pth file or a directory from
`python -m maskrcnn_jax.convert`. Writes DIR/<image stem>.png (detections
above --score-thr drawn; inputs sharing a stem, x.jpg and x.png, give
x_jpg.png and x_png.png) and DIR/predictions.json (every detection). An
output that would overwrite an input is refused before any work; images
that cannot be read are skipped and named, and the exit status is then 2.
"""

import argparse
import sys

from maskrcnn_jax import demo_lib
from maskrcnn_jax import errors


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', required=True, help='config file')
  p.add_argument('--checkpoint', required=True,
                 help='MMDetection .pth or converted checkpoint directory')
  p.add_argument('--input', required=True, help='image file or folder')
  p.add_argument('--out-dir', required=True, help='output folder')
  p.add_argument('--score-thr', type=float, default=0.3,
                 help='minimum score of drawn detections (default 0.3)')
  p.add_argument('--batch-size', type=int, default=1)
  p.add_argument('--dtype', default=None,
                 choices=['float32', 'bfloat16', 'float16'],
                 help='compute dtype (default: the config\'s)')
  p.add_argument('--config-override', action='append', default=[],
                 metavar='KEY=VALUE',
                 help='override a config field, e.g. test.score_thr=0.1')
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  demo_lib.run_demo(args.config, args.checkpoint, args.input, args.out_dir,
                    score_thr=args.score_thr, batch_size=args.batch_size,
                    dtype=args.dtype, overrides=args.config_override)


if __name__ == '__main__':
  sys.exit(errors.main_guard(main))
