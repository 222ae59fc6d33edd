"""Drawing a COCO-format dataset's ground truth, as MMDetection's
tools/analysis_tools/browse_dataset.py (the command: tools/browse_dataset.py).

    from maskrcnn_jax import browse
    browse.browse_dataset('ann.json', 'images/', 'out/', max_images=3)

Per image: masks, boxes and class names of the GT instances (class names
from the annotation file's categories), crowd and ignored boxes as thin grey
outlines captioned 'ignored'. As loaded (`coco.load_coco(train=False)`), or
with a config's training transforms (`train_config`: resize, flip, fixed
canvas; the compact GT masks pasted back onto the canvas, covered fraction
>= 0.5, the padded canvas area left black).
"""

import os
from typing import List, Optional

import cv2
import numpy as np

from maskrcnn_jax import output_paths
from maskrcnn_jax import visualize
from maskrcnn_jax.data import coco
from maskrcnn_jax.data import transforms

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


def browse_dataset(ann: str, images: str, out_dir: str,
                   max_images: Optional[int] = None, config=None,
                   seed: int = 0, log=print) -> List[str]:
  """Draws the dataset's GT into out_dir/<image file stem>.png.

  Images that share a stem get distinct names (`output_paths.output_names`);
  an output that would be an input file stops the run before any drawing.

  Args:
    ann, images: a COCO-format annotation file and its image folder.
    out_dir: output folder (created).
    max_images: the first N images only.
    config: a config: show the examples through its training pipeline.
    seed: seed of the random scale/flip draws (with config).
    log: where the per-image lines go.

  Returns:
    The written file paths.

  Raises:
    FileNotFoundError / coco.CocoFormatError: unreadable dataset.
    errors.UserError: an output path is one of the input images.
  """
  cfg = None
  if config is not None:
    cfg = transforms.TransformConfig.from_config(config, train=True)
  dataset = coco.load_coco(ann, images, train=cfg is not None)
  class_names = dataset.class_names
  n = len(dataset) if max_images is None else min(max_images, len(dataset))
  inputs = [dataset.records[i].image_path for i in range(n)]
  outputs = [os.path.join(out_dir, name)
             for name in output_paths.output_names(inputs)]
  output_paths.check_no_overwrite(inputs, outputs)
  os.makedirs(out_dir, exist_ok=True)
  log(f'{ann}: {len(dataset)} images, {len(class_names)} classes '
      f'({", ".join(class_names)}); drawing {n} into {out_dir}')
  written = []
  for i in range(n):
    record = dataset.records[i]
    if cfg is not None:
      drawn, info = browse_train(record, class_names, cfg,
                                 np.random.default_rng((seed, i)))
    else:
      drawn = browse_loaded(record, class_names)
      info = f'{record.width}x{record.height} (w x h)'
    out = outputs[i]
    cv2.imwrite(out, drawn[..., ::-1])
    written.append(out)
    log(f'{out}: {record.num_instances} instances, '
        f'{len(record.ignored_boxes)} ignored, {info}')
  return written
