"""Draws a COCO-format dataset's ground truth, as MMDetection's
tools/analysis_tools/browse_dataset.py.

  python tools/browse_dataset.py --ann FILE --images DIR --out-dir DIR \
      [--max-images N]
  python tools/browse_dataset.py --ann FILE --images DIR --out-dir DIR \
      --config configs/r50_fpn_1x.py --train-pipeline [--seed 0]

Writes DIR/<image file stem>.png per image: masks, boxes and class names of
the GT instances (class names from the annotation file's categories), crowd
and ignored boxes as thin grey outlines captioned 'ignored'. As loaded
(`coco.load_coco(train=False)`: every image), or with --train-pipeline as
the training step sees it: the config's train filter and transforms
(resize, flip, fixed canvas; `data.transforms.train_transform`) with the
compact GT masks pasted back onto the canvas (`transforms.paste_compact`,
covered fraction >= 0.5), the padded canvas area left black.
"""

import argparse
import os
import sys

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from maskrcnn_jax import errors
from maskrcnn_jax import output_paths
from maskrcnn_jax import visualize  # pylint: disable=g-import-not-at-top
from maskrcnn_jax.data import coco  # pylint: disable=g-import-not-at-top
from maskrcnn_jax.data import transforms  # pylint: disable=g-import-not-at-top

_IGNORED_COLOR = (160, 160, 160)


def _draw_ignored(image_rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  for x1, y1, x2, y2 in np.asarray(boxes, np.float32).reshape(-1, 4):
    p1 = (int(round(float(x1))), int(round(float(y1))))
    p2 = (int(round(float(x2))), int(round(float(y2))))
    cv2.rectangle(image_rgb, p1, p2, _IGNORED_COLOR, 1, cv2.LINE_AA)
    cv2.putText(image_rgb, 'ignored', (p1[0], max(p1[1] - 2, 8)),
                cv2.FONT_HERSHEY_SIMPLEX, 0.35, _IGNORED_COLOR, 1,
                cv2.LINE_AA)
  return image_rgb


def draw_gt(image_bgr: np.ndarray, boxes, labels, masks, class_names,
            ignored_boxes=()) -> np.ndarray:
  """GT drawn on a copy of the image; returns RGB uint8."""
  n = len(boxes)
  drawn = visualize.draw_detections(
      image_bgr[..., ::-1], np.asarray(boxes, np.float32).reshape(-1, 4),
      np.ones((n,), np.float32), np.asarray(labels), masks, class_names,
      score_thr=0.0, show_scores=False)
  return _draw_ignored(drawn, ignored_boxes)


def browse_loaded(record, class_names):
  """The record as annotated (original image and masks)."""
  image = coco.load_image(record)
  h, w = image.shape[:2]
  masks = np.stack([coco.segmentation_to_bitmap(m, h, w).astype(bool)
                    for m in record.masks]) if record.masks else None
  return draw_gt(image, record.boxes, record.labels, masks, class_names,
                 record.ignored_boxes)


def browse_train(record, class_names, cfg, rng):
  """The record through the training transforms (canvas, compact masks)."""
  ex = transforms.train_transform(record, coco.load_image(record), rng, cfg)
  canvas = ex['image']
  valid = ex['gt_valid']
  boxes = ex['gt_boxes'][valid]
  masks = None
  if 'gt_masks' in ex:
    masks = np.stack([
        transforms.paste_compact(m, b, canvas.shape[:2]) >= 0.5
        for m, b in zip(ex['gt_masks'][valid], boxes)]) if len(boxes) else None
  drawn = draw_gt(canvas, boxes, ex['gt_labels'][valid], masks, class_names,
                  ex['gt_ignored_boxes'][ex['gt_ignored_valid']])
  ph, pw = (int(v) for v in ex['pad_hw'])
  # The padded image area (multiple of size_divisor) on the fixed canvas.
  cv2.rectangle(drawn, (0, 0), (pw - 1, ph - 1), (255, 255, 255), 1)
  info = (f'resized to {int(ex["image_hw"][1])}x{int(ex["image_hw"][0])} '
          f'(w x h) on a {canvas.shape[1]}x{canvas.shape[0]} canvas'
          f'{", flipped" if bool(ex["flip"]) else ""}')
  return drawn, info


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--ann', required=True, help='COCO annotation JSON')
  p.add_argument('--images', required=True, help='image folder')
  p.add_argument('--out-dir', required=True)
  p.add_argument('--max-images', type=int, default=None)
  p.add_argument('--config', default=None,
                 help='config file (needed for --train-pipeline)')
  p.add_argument('--config-override', action='append', default=[],
                 help='a.b=value, repeatable')
  p.add_argument('--train-pipeline', action='store_true',
                 help='show the transformed training examples')
  p.add_argument('--seed', type=int, default=0,
                 help='seed of the random scale/flip draws')
  args = p.parse_args(argv)
  if args.train_pipeline and not args.config:
    p.error('--train-pipeline needs --config')

  cfg = None
  if args.train_pipeline:
    from maskrcnn_jax import config as config_lib  # pylint: disable=g-import-not-at-top
    config = config_lib.load_config(args.config, args.config_override)
    cfg = transforms.TransformConfig.from_config(config, train=True)
  try:
    dataset = coco.load_coco(args.ann, args.images,
                             train=args.train_pipeline)
  except (FileNotFoundError, coco.CocoFormatError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  class_names = dataset.class_names
  n = len(dataset) if args.max_images is None else min(args.max_images,
                                                         len(dataset))
  inputs = [dataset.records[i].image_path for i in range(n)]
  outputs = [os.path.join(args.out_dir, name)
             for name in output_paths.output_names(inputs)]
  output_paths.check_no_overwrite(inputs, outputs)
  os.makedirs(args.out_dir, exist_ok=True)
  print(f'{args.ann}: {len(dataset)} images, {len(class_names)} classes '
        f'({", ".join(class_names)}); drawing {n} into {args.out_dir}')
  for i in range(n):
    record = dataset.records[i]
    if cfg is not None:
      drawn, info = browse_train(record, class_names, cfg,
                                 np.random.default_rng((args.seed, i)))
    else:
      drawn = browse_loaded(record, class_names)
      info = f'{record.width}x{record.height} (w x h)'
    out = outputs[i]
    cv2.imwrite(out, drawn[..., ::-1])
    print(f'{out}: {record.num_instances} instances, '
          f'{len(record.ignored_boxes)} ignored, {info}')
  return 0


if __name__ == '__main__':
  sys.exit(errors.main_guard(main))
