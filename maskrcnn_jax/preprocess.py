"""Host-side test preprocessing: decode, keep-ratio resize, canvas placement.

Matches MMDetection's test pipeline: `LoadImageFromFile` (cv2, BGR, EXIF
orientation applied), `Resize(scale=(1333, 800), keep_ratio=True)` with
cv2 INTER_LINEAR and mmcv's rounding, then padding. Normalisation happens on
the device (`maskrcnn_jax.models.mask_rcnn.normalize_images`).
"""

import dataclasses
import os
from typing import Sequence, Tuple

import cv2
import numpy as np


@dataclasses.dataclass
class PreparedImage:
  """One image placed on a padded canvas.

  Attributes:
    canvas: (Hc, Wc, 3) uint8, channel order as decoded (BGR), zero padded.
    image_hw: (h, w) of the resized image on the canvas.
    pad_hw: image_hw rounded up to the size divisor (MMDetection pad_shape).
    ori_hw: (H, W) of the original image.
    scale_factor: (w_scale, h_scale) = resized / original, per axis.
  """
  canvas: np.ndarray
  image_hw: Tuple[int, int]
  pad_hw: Tuple[int, int]
  ori_hw: Tuple[int, int]
  scale_factor: Tuple[float, float]


def read_image(path: str) -> np.ndarray:
  """Reads an image file as uint8 BGR (H, W, 3); clear error if unreadable."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'image not found: {path}')
  data = np.fromfile(path, np.uint8)
  image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
  if image is None:
    raise ValueError(f'cannot decode image (corrupt or unsupported): {path}')
  return image


def rescale_size(hw: Sequence[int], scale: Sequence[int]) -> Tuple[int, int]:
  """mmcv `rescale_size`: keep-ratio (h, w) fitting (long, short) bounds."""
  h, w = hw
  long_edge, short_edge = max(scale), min(scale)
  factor = min(long_edge / max(h, w), short_edge / min(h, w))
  return int(h * float(factor) + 0.5), int(w * float(factor) + 0.5)


def resize_keep_ratio(image: np.ndarray, scale: Sequence[int]) -> np.ndarray:
  """cv2 bilinear resize to `rescale_size` (mmcv `imrescale`)."""
  new_h, new_w = rescale_size(image.shape[:2], scale)
  return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def choose_canvas(pad_hw: Sequence[int],
                  canvases: Sequence[Sequence[int]]) -> Tuple[int, int]:
  """First canvas (H, W) that holds pad_hw; error if none does."""
  for ch, cw in canvases:
    if pad_hw[0] <= ch and pad_hw[1] <= cw:
      return int(ch), int(cw)
  raise ValueError(f'padded image size {tuple(pad_hw)} fits none of the '
                   f'canvases {[tuple(c) for c in canvases]}; add a larger '
                   'one to config.input.canvases')


def prepare_image(image_bgr: np.ndarray, scale: Sequence[int],
                  canvases: Sequence[Sequence[int]],
                  size_divisor: int = 32) -> PreparedImage:
  """Resizes a uint8 BGR (H, W, 3) image and places it on its canvas."""
  if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or (
      image_bgr.dtype != np.uint8):
    raise ValueError('expected a uint8 (H, W, 3) image, got '
                     f'{image_bgr.dtype} {image_bgr.shape}')
  ori_hw = image_bgr.shape[:2]
  resized = resize_keep_ratio(image_bgr, scale)
  h, w = resized.shape[:2]
  pad_hw = (-(-h // size_divisor) * size_divisor,
            -(-w // size_divisor) * size_divisor)
  ch, cw = choose_canvas(pad_hw, canvases)
  canvas = np.zeros((ch, cw, 3), np.uint8)
  canvas[:h, :w] = resized
  return PreparedImage(canvas=canvas, image_hw=(h, w), pad_hw=pad_hw,
                       ori_hw=tuple(ori_hw),
                       scale_factor=(w / ori_hw[1], h / ori_hw[0]))
