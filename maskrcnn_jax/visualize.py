"""Drawing detections and converting them to JSON-ready records (host side).

Boxes are XYXY in absolute pixels of the image they are drawn on / reported
for (original-image pixels for the model's rescaled outputs); labels are
0-based class indices into `class_names`.
"""

import colorsys
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from maskrcnn_jax.masks import encode_rle

_MASK_ALPHA = 0.5


def label_color(label: int) -> Tuple[int, int, int]:
  """Deterministic, well-spread RGB colour of a class label.

  Args:
    label: 0-based class index.

  Returns:
    (r, g, b) ints in [0, 255].
  """
  hue = (int(label) * 0.618033988749895) % 1.0
  sat = 0.85 - 0.25 * ((int(label) // 7) % 2)
  r, g, b = colorsys.hsv_to_rgb(hue, sat, 0.95)
  return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def draw_detections(image_rgb: np.ndarray, boxes: np.ndarray,
                    scores: np.ndarray, labels: np.ndarray,
                    masks: Optional[np.ndarray],
                    class_names: Sequence[str],
                    score_thr: float = 0.3,
                    show_scores: bool = True) -> np.ndarray:
  """Draws translucent masks, box outlines and 'name score' captions.

  Detections are drawn in increasing score order so that the most confident
  ones end up on top.

  Args:
    image_rgb: (H, W, 3) uint8 RGB image.
    boxes: (N, 4) float XYXY boxes in absolute pixels of `image_rgb`.
    scores: (N,) float scores.
    labels: (N,) int 0-based class indices.
    masks: (N, H, W) bool masks, or None to draw boxes only.
    class_names: names indexed by label.
    score_thr: only detections with score >= score_thr are drawn.
    show_scores: captions 'name score'; False: 'name' only (ground truth).

  Returns:
    A new (H, W, 3) uint8 RGB image; an unchanged copy when nothing passes
    the threshold.
  """
  image = np.ascontiguousarray(np.asarray(image_rgb, dtype=np.uint8)).copy()
  boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
  scores = np.asarray(scores, dtype=np.float32).reshape(-1)
  labels = np.asarray(labels).astype(np.int64).reshape(-1)
  if masks is not None:
    masks = np.asarray(masks, dtype=bool)
  img_h, img_w = image.shape[:2]
  keep = np.nonzero(scores >= score_thr)[0]
  if keep.size == 0:
    return image
  keep = keep[np.argsort(scores[keep], kind='stable')]

  # Masks first (all of them), then outlines and captions on top.
  for i in keep:
    if masks is None:
      break
    m = masks[i]
    if not m.any():
      continue
    color = np.asarray(label_color(labels[i]), np.float32)
    blended = image[m].astype(np.float32) * (1 - _MASK_ALPHA) + (
        color * _MASK_ALPHA)
    image[m] = np.clip(np.round(blended), 0, 255).astype(np.uint8)

  thickness = max(1, int(round(min(img_h, img_w) / 400)))
  font_scale = max(0.35, min(img_h, img_w) / 1200)
  font = cv2.FONT_HERSHEY_SIMPLEX
  for i in keep:
    color = label_color(labels[i])
    x1, y1, x2, y2 = (int(round(float(v))) for v in boxes[i])
    cv2.rectangle(image, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)
    label = int(labels[i])
    name = class_names[label] if 0 <= label < len(class_names) else str(label)
    caption = f'{name} {float(scores[i]):.2f}' if show_scores else name
    (tw, th), base = cv2.getTextSize(caption, font, font_scale, 1)
    # Caption above the box, or inside it when there is no room above.
    tx = min(max(x1, 0), max(img_w - tw, 0))
    ty = y1 - base - 1 if y1 - th - base - 1 >= 0 else max(y1, 0) + th + 1
    cv2.rectangle(image, (tx, ty - th - 1), (tx + tw, ty + base), color,
                  cv2.FILLED)
    luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    text_color = (0, 0, 0) if luma > 150 else (255, 255, 255)
    cv2.putText(image, caption, (tx, ty), font, font_scale, text_color, 1,
                cv2.LINE_AA)
  return image


def detections_to_records(file_name: str, boxes: np.ndarray,
                          scores: np.ndarray, labels: np.ndarray,
                          masks: Optional[np.ndarray],
                          class_names: Sequence[str]) -> List[Dict]:
  """One JSON-serialisable record per detection.

  Args:
    file_name: image file name stored in every record.
    boxes: (N, 4) float XYXY boxes in absolute (original-image) pixels.
    scores: (N,) float scores.
    labels: (N,) int 0-based class indices.
    masks: (N, H, W) bool masks at original size, or None (records then have
      no "segmentation").
    class_names: names indexed by label.

  Returns:
    N dicts {"file_name": str, "bbox": [x, y, w, h] (floats, COCO
    `[x1, y1, x2 - x1, y2 - y1]`), "score": float, "label": int (0-based),
    "category": str, "segmentation": {"size": [H, W], "counts": str}}.
  """
  boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
  scores = np.asarray(scores, dtype=np.float32).reshape(-1)
  labels = np.asarray(labels).astype(np.int64).reshape(-1)
  rles = encode_rle(masks) if masks is not None else None
  records = []
  for i in range(boxes.shape[0]):
    x1, y1, x2, y2 = (float(v) for v in boxes[i])
    label = int(labels[i])
    rec = {
        'file_name': file_name,
        'bbox': [x1, y1, x2 - x1, y2 - y1],
        'score': float(scores[i]),
        'label': label,
        'category': str(class_names[label]),
    }
    if rles is not None:
      rec['segmentation'] = rles[i]
    records.append(rec)
  return records
