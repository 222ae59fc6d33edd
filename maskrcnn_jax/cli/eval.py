"""Evaluates a detector on a COCO-format set (box, mask and proposal metrics).

  maskrcnn-eval --checkpoint CKPT [--config CONFIG] [--config.a.b=value] \
      [--ann FILE --images DIR] [--out-dir DIR] [--classwise] \
      [--show-dir DIR] [--batch-size N] [--max-images K] [--proposals]

(also `python eval.py ...` in the repository, `python -m maskrcnn_jax eval`).
CKPT is an MMDetection .pth file or a checkpoint directory (from the
converter or a training run's `final`). CONFIG is a config file or a row
name; without it, the config stored in the checkpoint directory is used (a
.pth needs --config). The data default to the config's val set
(config.data.val_ann / val_images). Metrics are MMDetection's CocoMetric
(bbox_mAP, ..., segm_mAP, ...; with --proposals also the RPN's AR@100/300/
1000). --out-dir receives results.bbox.json, results.segm.json,
[results.proposal.json], metrics.json [and classwise.json].

The annotation file is validated as the training data are (one line naming
the file and the offending id or value), and every image is checked to
decode before the model runs; --skip-bad-images evaluates without the
unreadable ones (listed in metrics.json). Errors are one line `error: ...`
(exit status 2); --debug (or MASKRCNN_JAX_DEBUG=1) shows the traceback.
"""

import argparse
import os
import sys
from typing import Dict, Optional, Sequence

from maskrcnn_jax import config as config_lib
from maskrcnn_jax import errors
from maskrcnn_jax import evaluation

Log = evaluation.Log


def parse_args(argv):
  """(argparse namespace, overrides) of the command line."""
  p = argparse.ArgumentParser(prog='maskrcnn-eval',
                              description=__doc__.split('\n')[0])
  config_lib.add_model_arguments(p, dtype=True)
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
  p.add_argument('--skip-bad-images', action='store_true',
                 help='evaluate without the images that cannot be read '
                      '(else they stop the run); listed in metrics.json')
  p.add_argument('--no-progress', dest='progress', action='store_false',
                 help='no progress bar')
  return config_lib.parse_config_args(p, argv)


def run_eval(config_path: Optional[str], checkpoint: str,
             ann: Optional[str] = None, images: Optional[str] = None,
             out_dir: Optional[str] = None, classwise: bool = False,
             show_dir: Optional[str] = None, show_score_thr: float = 0.3,
             batch_size: Optional[int] = None,
             max_images: Optional[int] = None, proposals: bool = False,
             metrics: Optional[Sequence[str]] = None,
             workers: Optional[int] = None, dtype: Optional[str] = None,
             overrides: Sequence[str] = (), progress: bool = True,
             log: Log = print,
             skip_bad_images: bool = False) -> Dict[str, float]:
  """The eval command: loads config + checkpoint, evaluates, prints the
  metrics. config_path None: the checkpoint's stored config.

  The annotation file is validated (`coco_metric.load_coco_gt`) and every
  image decoded (`data.coco.check_eval_images`) before the model is built;
  skip_bad_images: evaluate without the unreadable ones (named in the
  result and metrics.json) instead of stopping.

  Raises:
    FileNotFoundError / data.coco.CocoFormatError / ValueError /
    errors.UserError: bad config, checkpoint, annotations or images.
  """
  from maskrcnn_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax import predictor as predictor_lib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  config = checkpoint_lib.resolve_config(config_path, checkpoint, overrides)
  ann = ann or config.data.val_ann
  images = images or config.data.val_images
  if not os.path.isfile(ann):
    raise FileNotFoundError(f'annotation file not found: {ann} (pass --ann)')
  if not os.path.isdir(images):
    raise FileNotFoundError(f'image folder not found: {images} '
                            '(pass --images)')
  metrics = list(metrics or ('bbox', 'segm'))
  if proposals and 'proposal' not in metrics:
    metrics.append('proposal')
  coco_gt = evaluation.load_coco_gt(ann)
  num_cats = len(coco_gt.getCatIds())
  if num_cats != config.model.num_classes:
    raise ValueError(
        f'{ann} has {num_cats} categories but the config has '
        f'model.num_classes={config.model.num_classes}; the checkpoint must '
        'be trained on the dataset\'s categories')
  from maskrcnn_jax.data import coco as coco_data  # pylint: disable=g-import-not-at-top
  img_ids, skipped = coco_data.check_eval_images(
      coco_gt, images, evaluation.select_images(coco_gt, max_images),
      skip_bad_images, log)
  if batch_size is None:
    batch_size = jax.local_device_count()
  predictor = predictor_lib.Predictor.from_checkpoint(
      config, checkpoint, batch_size=batch_size, dtype=dtype)
  log(f'evaluating {checkpoint} on {ann} ({images}); {metrics}; '
      f'batch {batch_size} over {predictor.mesh.size} device(s)')
  result = evaluation.evaluate(
      predictor, coco_gt, images, metrics=metrics, classwise=classwise,
      img_ids=img_ids, out_dir=out_dir, show_dir=show_dir,
      show_score_thr=show_score_thr, workers=workers, progress=progress,
      log=log)
  if skipped:
    result = coco_data.note_skipped_images(result, skipped, out_dir, log)
  width = max(len(k) for k in result)
  log('\n'.join(f'{k.ljust(width)}  {v}' for k, v in result.items()
                if not k.endswith('_precision')))
  if out_dir:
    log(f'results and metrics -> {out_dir}')
  return result


def _main(argv) -> int:
  args, overrides = parse_args(argv)
  run_eval(
      args.config, args.checkpoint, ann=args.ann, images=args.images,
      out_dir=args.out_dir, classwise=args.classwise,
      show_dir=args.show_dir, show_score_thr=args.show_score_thr,
      batch_size=args.batch_size, max_images=args.max_images,
      proposals=args.proposals, metrics=args.metrics,
      workers=args.workers, dtype=args.dtype,
      overrides=overrides, progress=args.progress,
      skip_bad_images=args.skip_bad_images)
  return 0


def main(argv=None) -> int:
  """Runs the command; user errors: one line `error: ...`, status 2."""
  return errors.main_guard(_main, argv)


if __name__ == '__main__':
  sys.exit(main())
