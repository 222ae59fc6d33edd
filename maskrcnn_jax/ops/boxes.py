"""Box utilities and MMDetection's `DeltaXYWHBBoxCoder`.

All boxes are XYXY in absolute pixels (float32): x2 - x1 is the width, with
no +1, as in MMDetection >= 2.0.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# |log(16 / 1000)|: the clamp of the decoded log-size deltas.
WH_RATIO_CLIP = 16 / 1000
MAX_LOG_RATIO = float(np.abs(np.log(WH_RATIO_CLIP)))


def box_area(boxes):
  """(..., 4) XYXY -> (...,) area (x2 - x1) * (y2 - y1)."""
  return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def opaque(x, zero):
  """Returns float32 `x` unchanged, hidden from FMA contraction.

  XLA lets LLVM contract a multiply followed by an add into a fused
  multiply-add, which rounds once instead of twice, and it may do so in one
  fusion and not in another. `zero` is a uint32 value that is 0 at run time
  but unknown to the compiler, so the product `x` came from stays rounded
  on its own (XLA removes `optimization_barrier`s on CPU).

  Args:
    x: float32 array.
    zero: uint32 scalar (or broadcastable array) equal to 0 at run time.
  """
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32) | zero
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def runtime_zero(boxes):
  """uint32 0 computed from the data (1 only if the first value is NaN)."""
  first = boxes.reshape(-1)[0]
  return (first != first).astype(jnp.uint32)


def pairwise_iou(boxes1, boxes2, eps=1e-6):
  """IoU matrix as MMDetection's `BboxOverlaps2D` (mode 'iou').

  Every product is rounded on its own, as PyTorch's separate kernels round
  it (no FMA contraction, see `opaque`), so any two evaluations of this
  function on the same boxes agree bit for bit, whatever XLA fuses them
  into.

  Args:
    boxes1: (N, 4) XYXY.
    boxes2: (M, 4) XYXY.
    eps: lower clamp of the union.

  Returns:
    (N, M) float32 IoU.
  """
  boxes1 = boxes1.astype(jnp.float32)
  boxes2 = boxes2.astype(jnp.float32)
  if boxes1.size == 0 or boxes2.size == 0:
    return jnp.zeros((boxes1.shape[0], boxes2.shape[0]), jnp.float32)
  # From both inputs: one of them may be a constant (anchors), which would
  # let XLA fold the zero and contract again.
  zero = runtime_zero(boxes1) | runtime_zero(boxes2)
  area1 = opaque(box_area(boxes1), zero)
  area2 = opaque(box_area(boxes2), zero)
  lt = jnp.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
  rb = jnp.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
  wh = jnp.clip(rb - lt, 0)
  overlap = opaque(wh[..., 0] * wh[..., 1], zero)
  union = jnp.maximum(area1[:, None] + area2[None, :] - overlap, eps)
  return overlap / union


def clip_boxes(boxes, image_hw):
  """Clips (..., 4) XYXY boxes to [0, W] x [0, H]; image_hw broadcasts (..., 2)."""
  h = jnp.asarray(image_hw[..., 0], boxes.dtype)[..., None]
  w = jnp.asarray(image_hw[..., 1], boxes.dtype)[..., None]
  x = jnp.clip(boxes[..., 0::2], 0, w)
  y = jnp.clip(boxes[..., 1::2], 0, h)
  return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def encode_deltas(proposals, gt, stds: Sequence[float] = (1., 1., 1., 1.)):
  """`bbox2delta`: (..., 4) proposals and targets -> (..., 4) normalised deltas."""
  px = (proposals[..., 0] + proposals[..., 2]) * 0.5
  py = (proposals[..., 1] + proposals[..., 3]) * 0.5
  pw = proposals[..., 2] - proposals[..., 0]
  ph = proposals[..., 3] - proposals[..., 1]
  gx = (gt[..., 0] + gt[..., 2]) * 0.5
  gy = (gt[..., 1] + gt[..., 3]) * 0.5
  gw = gt[..., 2] - gt[..., 0]
  gh = gt[..., 3] - gt[..., 1]
  deltas = jnp.stack([(gx - px) / pw, (gy - py) / ph,
                      jnp.log(gw / pw), jnp.log(gh / ph)], axis=-1)
  return deltas / jnp.asarray(stds, deltas.dtype)


def decode_deltas(rois, deltas, image_hw=None,
                  stds: Sequence[float] = (1., 1., 1., 1.)):
  """`delta2bbox` with means 0, clamped log-sizes and optional clipping.

  Args:
    rois: (..., 4) XYXY anchors or proposals.
    deltas: (..., 4) normalised deltas (dx, dy, dw, dh).
    image_hw: optional (..., 2) (height, width) of the resized, unpadded image
      to clip to, broadcastable against the leading dims.
    stds: target stds the deltas were normalised with.

  Returns:
    (..., 4) XYXY boxes.
  """
  deltas = deltas * jnp.asarray(stds, deltas.dtype)
  pxy = (rois[..., :2] + rois[..., 2:]) * 0.5
  pwh = rois[..., 2:] - rois[..., :2]
  dxy_wh = pwh * deltas[..., :2]
  dwh = jnp.clip(deltas[..., 2:], -MAX_LOG_RATIO, MAX_LOG_RATIO)
  gxy = pxy + dxy_wh
  gwh = pwh * jnp.exp(dwh)
  boxes = jnp.concatenate([gxy - gwh * 0.5, gxy + gwh * 0.5], axis=-1)
  if image_hw is not None:
    boxes = clip_boxes(boxes, image_hw)
  return boxes
