"""Evaluates a detector on a COCO-format set (box, mask and proposal metrics).

  python eval.py --config configs/r50_fpn_1x.py --checkpoint CKPT \
      [--ann FILE --images DIR] [--out-dir DIR] [--classwise] \
      [--show-dir DIR] [--batch-size N] [--max-images K] [--proposals]

CKPT is an MMDetection .pth file or a directory from
`python -m maskrcnn_jax.convert`. The data default to the config's COCO 2017
val (config.data.val_ann / val_images). Metrics are MMDetection's CocoMetric
(bbox_mAP, ..., segm_mAP, ...; with --proposals also the RPN's AR@100/300/
1000). --out-dir receives results.bbox.json, results.segm.json,
[results.proposal.json], metrics.json [and classwise.json].

The annotation file is validated as the training data are, and every image
is checked to decode before the model runs; --skip-bad-images evaluates
without the unreadable ones (listed in metrics.json). Errors are one line;
--debug shows the traceback.
"""

import argparse
import sys

from maskrcnn_jax import errors
from maskrcnn_jax import evaluation


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', required=True, help='config file')
  p.add_argument('--checkpoint', required=True,
                 help='MMDetection .pth or converted checkpoint directory')
  p.add_argument('--ann', default=None,
                 help='COCO-format annotation file (default: the config\'s '
                      'data.val_ann)')
  p.add_argument('--images', default=None,
                 help='image folder (default: the config\'s data.val_images)')
  p.add_argument('--out-dir', default=None,
                 help='write result and metric JSON files here')
  p.add_argument('--classwise', action='store_true',
                 help='per-class AP table')
  p.add_argument('--show-dir', default=None,
                 help='save drawn detections here (one PNG per image)')
  p.add_argument('--show-score-thr', type=float, default=0.3,
                 help='minimum score of drawn detections (default 0.3)')
  p.add_argument('--batch-size', type=int, default=None,
                 help='images per device step (default: one per device)')
  p.add_argument('--max-images', type=int, default=None,
                 help='evaluate only the first K images')
  p.add_argument('--proposals', action='store_true',
                 help='also evaluate RPN proposal recall (AR@100/300/1000)')
  p.add_argument('--metrics', nargs='+', default=None,
                 choices=list(evaluation.METRICS),
                 help='metrics to compute (default: bbox segm)')
  p.add_argument('--workers', type=int, default=None,
                 help='processes for mask pasting/encoding (default: half '
                      'the CPUs, at most 8; 0: none)')
  p.add_argument('--dtype', default=None,
                 choices=['float32', 'bfloat16', 'float16'],
                 help='compute dtype (default: the config\'s)')
  p.add_argument('--config-override', action='append', default=[],
                 metavar='KEY=VALUE',
                 help='override a config field, e.g. test.score_thr=0.1')
  p.add_argument('--skip-bad-images', action='store_true',
                 help='evaluate without the images that cannot be read '
                      '(else they stop the run); listed in metrics.json')
  p.add_argument('--no-progress', dest='progress', action='store_false',
                 help='no progress bar')
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  evaluation.run_eval(
      args.config, args.checkpoint, ann=args.ann, images=args.images,
      out_dir=args.out_dir, classwise=args.classwise,
      show_dir=args.show_dir, show_score_thr=args.show_score_thr,
      batch_size=args.batch_size, max_images=args.max_images,
      proposals=args.proposals, metrics=args.metrics,
      workers=args.workers, dtype=args.dtype,
      overrides=args.config_override, progress=args.progress,
      skip_bad_images=args.skip_bad_images)
  return 0


if __name__ == '__main__':
  sys.exit(errors.main_guard(main))
