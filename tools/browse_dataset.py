"""Draws a COCO-format dataset's ground truth, as MMDetection's
tools/analysis_tools/browse_dataset.py.

  python -m tools.browse_dataset --ann FILE --images DIR --out-dir DIR \
      [--max-images N]
  python -m tools.browse_dataset --ann FILE --images DIR --out-dir DIR \
      --config configs/r50_fpn_1x.py --train-pipeline [--seed 0]

(from the repository root; `python tools/browse_dataset.py` where the
package is installed). The library side is `maskrcnn_jax.browse`.

Writes DIR/<image file stem>.png per image (images sharing a stem get
distinct names; an output that would be an input file stops the run before
any drawing): masks, boxes and class names of
the GT instances (class names from the annotation file's categories), crowd
and ignored boxes as thin grey outlines captioned 'ignored'. As loaded
(`coco.load_coco(train=False)`: every image), or with --train-pipeline as
the training step sees it: the config's train filter and transforms
(resize, flip, fixed canvas; `data.transforms.train_transform`) with the
compact GT masks pasted back onto the canvas (`transforms.paste_compact`,
covered fraction >= 0.5), the padded canvas area left black.
"""

import argparse
import sys

from maskrcnn_jax import browse
from maskrcnn_jax import config as config_lib
from maskrcnn_jax import errors


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--ann', required=True, help='COCO annotation JSON')
  p.add_argument('--images', required=True, help='image folder')
  p.add_argument('--out-dir', required=True)
  p.add_argument('--max-images', type=int, default=None)
  p.add_argument('--config', default=None,
                 help='config file or row name (needed for --train-pipeline)')
  config_lib.add_override_argument(p)
  p.add_argument('--train-pipeline', action='store_true',
                 help='show the transformed training examples')
  p.add_argument('--seed', type=int, default=0,
                 help='seed of the random scale/flip draws')
  args, overrides = config_lib.parse_config_args(p, argv)
  if args.train_pipeline and not args.config:
    p.error('--train-pipeline needs --config')
  config = None
  if args.train_pipeline:
    config = config_lib.load_config(args.config, overrides)
  # A missing file or malformed annotations: one line `error: ...`,
  # status 2 (errors.main_guard).
  browse.browse_dataset(args.ann, args.images, args.out_dir,
                        args.max_images, config, args.seed)
  return 0


if __name__ == '__main__':
  sys.exit(errors.main_guard(main))
