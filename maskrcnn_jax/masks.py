"""Host-side (NumPy) mask utilities: pasting 28x28 mask probabilities into the
image, COCO RLE encoding and mask IoU.

`paste_masks` is a bit-faithful NumPy port of MMDetection 3.3.0's
`FCNMaskHead._predict_by_feat_single` on CPU, i.e. of detectron2's
`_do_paste_mask(..., skip_empty=True)`: every mask is resampled with
`F.grid_sample(mode='bilinear', padding_mode='zeros', align_corners=False)`
over a tight window around its box and thresholded with `>=`.
All arithmetic is float32, in PyTorch's order of operations.

Boxes are XYXY in absolute pixels of the image the masks are pasted into (the
ORIGINAL image for MMDetection's `rescale=True` outputs).
"""

from typing import Dict, List, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util

_F32 = np.float32


def _fma_f32(a: np.ndarray, b: np.ndarray, c) -> np.ndarray:
  """Correctly rounded float32 fused multiply-add `a * b + c`.

  PyTorch's vectorised (AVX2 / AVX-512) `grid_sample` CPU kernel uses FMA
  instructions, so reproducing it bit for bit needs a single rounding. The
  product of two float32 values is exact in float64; the float64 sum is made
  round-to-odd (from its TwoSum error term) so that the final conversion to
  float32 rounds exactly once.

  Args:
    a: float32 array.
    b: float32 array broadcastable with `a`.
    c: float32 array or scalar broadcastable with `a * b`.

  Returns:
    float32 array, `fl32(a * b + c)`.
  """
  p = np.asarray(a, np.float64) * np.asarray(b, np.float64)
  c = np.asarray(c, np.float64)
  s = p + c
  # TwoSum: s + err == p + c exactly.
  bb = s - p
  err = (p - (s - bb)) + (c - bb)
  bits = s.view(np.int64)
  inexact_even = (err != 0) & ((bits & 1) == 0)
  step = np.where((err > 0) == (s > 0), 1, -1).astype(np.int64)
  bits = np.where(inexact_even, bits + step, bits)
  return bits.view(np.float64).astype(_F32)


def _axis_interp(coords: np.ndarray, size: int) -> Tuple[
    np.ndarray, np.ndarray, np.ndarray]:
  """1-D part of `grid_sample` (bilinear, zeros padding, align_corners=False).

  Args:
    coords: (L,) float32 normalised grid coordinates in [-1, 1] (any value
      allowed, including NaN).
    size: input size along this axis (28).

  Returns:
    lo_idx: (L,) int64 index of the lower neighbour into an input padded by
      two zeros on each side (so indices are always in range).
    w_lo: (L,) float32 weight of the lower neighbour (`1 - frac`).
    w_hi: (L,) float32 weight of the upper neighbour (`frac`).
  """
  # Unnormalise ((g + 1) * size - 1) / 2; ATen's vectorised CPU kernel
  # computes it as fma(g + 1, size / 2, -0.5) (the factor 2 is exact).
  x = _fma_f32(coords + _F32(1), _F32(size / 2), _F32(-0.5))
  x_lo = np.floor(x)
  frac = x - x_lo
  w_hi = frac
  w_lo = _F32(1) - frac
  # Indices outside [-1, size] only ever touch the zero padding; NaN coords
  # give NaN weights (the output is NaN there, which never passes `>=`).
  x_lo = np.where(np.isnan(x_lo), _F32(-2), x_lo)
  lo_idx = np.clip(x_lo, -2, size).astype(np.int64) + 2
  return lo_idx, w_lo.astype(_F32), w_hi.astype(_F32)


def _paste_one(prob: np.ndarray, box: np.ndarray, img_h: int, img_w: int
              ) -> Tuple[np.ndarray, slice, slice]:
  """Resamples one (h, w) probability map into its tight image window.

  Args:
    prob: (h, w) float32 probabilities.
    box: (4,) float32 XYXY box in image pixels.
    img_h: image height.
    img_w: image width.

  Returns:
    (win_h, win_w) float32 resampled probabilities and the row and column
    slices of the window in the image (possibly empty).
  """
  x0, y0, x1, y1 = (_F32(v) for v in box)
  # Window: clamp(floor(min) - 1, min=0) .. clamp(ceil(max) + 1, max=size).
  x0_int = int(max(np.floor(x0) - _F32(1), _F32(0)))
  y0_int = int(max(np.floor(y0) - _F32(1), _F32(0)))
  x1_int = int(min(np.ceil(x1) + _F32(1), _F32(img_w)))
  y1_int = int(min(np.ceil(y1) + _F32(1), _F32(img_h)))
  # A box wholly left of / above the image makes torch.arange raise; MMDetection
  # never sees one (its boxes are clipped). Paste nothing for it.
  x1_int = max(x1_int, x0_int)
  y1_int = max(y1_int, y0_int)
  rows, cols = slice(y0_int, y1_int), slice(x0_int, x1_int)
  if y1_int == y0_int or x1_int == x0_int:
    return np.zeros((y1_int - y0_int, x1_int - x0_int), _F32), rows, cols

  img_y = np.arange(y0_int, y1_int).astype(_F32) + _F32(0.5)
  img_x = np.arange(x0_int, x1_int).astype(_F32) + _F32(0.5)
  with np.errstate(divide='ignore', invalid='ignore', over='ignore'):
    gy = (img_y - y0) / (y1 - y0) * _F32(2) - _F32(1)
    gx = (img_x - x0) / (x1 - x0) * _F32(2) - _F32(1)
    gy[np.isinf(gy)] = 0
    gx[np.isinf(gx)] = 0

    mask_h, mask_w = prob.shape
    iy, wy_lo, wy_hi = _axis_interp(gy, mask_h)
    ix, wx_lo, wx_hi = _axis_interp(gx, mask_w)
    padded = np.zeros((mask_h + 4, mask_w + 4), _F32)
    padded[2:-2, 2:-2] = prob
    # The grid is separable: weights are outer products of 1-D weights.
    # ATen: nw = s * e, ne = s * w, sw = n * e, se = n * w, where `w` and `n`
    # are the fractional parts (weights of the upper neighbours), e = 1 - w,
    # s = 1 - n; n(orth) = lower row, w(est) = lower column.
    nw = wy_lo[:, None] * wx_lo[None, :]
    ne = wy_lo[:, None] * wx_hi[None, :]
    sw = wy_hi[:, None] * wx_lo[None, :]
    se = wy_hi[:, None] * wx_hi[None, :]
    v_nw = padded[iy[:, None], ix[None, :]]
    v_ne = padded[iy[:, None], ix[None, :] + 1]
    v_sw = padded[iy[:, None] + 1, ix[None, :]]
    v_se = padded[iy[:, None] + 1, ix[None, :] + 1]
    # ATen accumulates with FMAs in this order.
    out = _fma_f32(v_se, se, _fma_f32(v_sw, sw, _fma_f32(v_ne, ne, v_nw * nw)))
  return out, rows, cols


def paste_masks(mask_probs: np.ndarray, boxes: np.ndarray,
                image_hw: Sequence[int], threshold: float = 0.5) -> np.ndarray:
  """Pastes per-detection mask probabilities into full-image binary masks.

  Exact NumPy port of MMDetection 3.3.0 (= detectron2) `_do_paste_mask` on
  CPU with `skip_empty=True`, followed by `>= threshold`.

  Args:
    mask_probs: (N, M, M) float32 probabilities (already sigmoid'ed) of each
      detection's own class, M = 28 for the FCN mask head.
    boxes: (N, 4) float32 XYXY boxes in absolute pixels of the target image
      (original-image pixels for rescaled MMDetection outputs).
    image_hw: (H, W) of the target image.
    threshold: binarisation threshold (`mask_thr_binary`), compared with >=.

  Returns:
    (N, H, W) bool masks; (0, H, W) when N == 0.
  """
  img_h, img_w = int(image_hw[0]), int(image_hw[1])
  mask_probs = np.asarray(mask_probs, dtype=_F32)
  boxes = np.asarray(boxes, dtype=_F32).reshape(-1, 4)
  n = boxes.shape[0]
  if mask_probs.shape[0] != n:
    raise ValueError(f'{mask_probs.shape[0]} masks but {n} boxes')
  out = np.zeros((n, img_h, img_w), dtype=bool)
  for i in range(n):
    probs, rows, cols = _paste_one(mask_probs[i], boxes[i], img_h, img_w)
    out[i, rows, cols] = probs >= _F32(threshold)
  return out


def paste_mask_logits(mask_logits: np.ndarray, boxes: np.ndarray,
                      image_hw: Sequence[int],
                      threshold: float = 0.5) -> np.ndarray:
  """`paste_masks` of sigmoid(mask_logits) (float32), as the predictor does.

  Args:
    mask_logits: (N, M, M) mask logits of each detection's own class.
    boxes: (N, 4) XYXY boxes in pixels of the target image.
    image_hw: (H, W) of the target image.
    threshold: binarisation threshold on the probabilities.

  Returns:
    (N, H, W) bool masks.
  """
  logits = np.asarray(mask_logits, _F32)
  probs = (_F32(1.0) / (_F32(1.0) + np.exp(-logits))).astype(_F32)
  return paste_masks(probs, boxes, image_hw, threshold)


def encode_rle(masks: np.ndarray) -> List[Dict]:
  """Encodes binary masks as COCO RLE, as MMDetection's `encode_mask_results`.

  Args:
    masks: (N, H, W) bool (or 0/1) masks.

  Returns:
    N dicts {'size': [H, W], 'counts': str}.
  """
  masks = np.asarray(masks)
  rles = []
  for m in masks:
    rle = mask_util.encode(np.array(m[:, :, None], order='F', dtype='uint8'))[0]
    counts = rle['counts']
    if isinstance(counts, bytes):
      counts = counts.decode()
    rles.append({'size': [int(s) for s in rle['size']], 'counts': counts})
  return rles


def decode_rle(rles: Sequence[Dict]) -> np.ndarray:
  """Decodes COCO RLE dicts (str or bytes counts) to (N, H, W) bool masks."""
  if not rles:
    return np.zeros((0, 0, 0), dtype=bool)
  objs = []
  for r in rles:
    counts = r['counts']
    objs.append({'size': list(r['size']),
                 'counts': counts.encode() if isinstance(counts, str) else counts})
  return np.moveaxis(mask_util.decode(objs), -1, 0).astype(bool)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU of corresponding binary masks.

  Args:
    a: (..., H, W) binary masks.
    b: (..., H, W) binary masks, same shape as `a`.

  Returns:
    (...) float64 IoU per mask pair; 1.0 where both masks are empty.
  """
  a = np.asarray(a, dtype=bool)
  b = np.asarray(b, dtype=bool)
  inter = np.logical_and(a, b).sum(axis=(-2, -1)).astype(np.float64)
  union = np.logical_or(a, b).sum(axis=(-2, -1)).astype(np.float64)
  return np.where(union > 0, inter / np.maximum(union, 1), 1.0)
