"""MMDetection `AnchorGenerator` (center offset 0, float base anchors)."""

from typing import Sequence

import numpy as np


def base_anchors(stride: float, scales: Sequence[float],
                 ratios: Sequence[float]) -> np.ndarray:
  """(A, 4) XYXY anchors centred on (0, 0), ratio-major (scale_major=True).

  A = len(ratios) * len(scales); ratio = h / w.
  """
  h_ratios = np.sqrt(np.asarray(ratios, np.float32))
  w_ratios = np.float32(1) / h_ratios
  scales = np.asarray(scales, np.float32)
  ws = (np.float32(stride) * w_ratios[:, None] * scales[None, :]).reshape(-1)
  hs = (np.float32(stride) * h_ratios[:, None] * scales[None, :]).reshape(-1)
  half = np.float32(0.5)
  return np.stack([-half * ws, -half * hs, half * ws, half * hs],
                  axis=-1).astype(np.float32)


def grid_anchors(feature_hw: Sequence[int], stride: float,
                 scales: Sequence[float],
                 ratios: Sequence[float]) -> np.ndarray:
  """All anchors of one level: (H * W * A, 4), flattened as ((y*W + x)*A + a).

  This is the order of an NHWC head output reshaped to (H * W * A, ...).
  """
  h, w = feature_hw
  base = base_anchors(stride, scales, ratios)
  shift_x = np.arange(w, dtype=np.float32) * np.float32(stride)
  shift_y = np.arange(h, dtype=np.float32) * np.float32(stride)
  sx, sy = np.meshgrid(shift_x, shift_y)  # (H, W), row-major over y.
  shifts = np.stack([sx, sy, sx, sy], axis=-1).reshape(-1, 1, 4)
  return (shifts + base[None]).reshape(-1, 4).astype(np.float32)


def anchor_valid_flags(feature_hw: Sequence[int], valid_hw, num_base: int):
  """(..., H * W * A) bool: anchor lies on a cell inside the valid map.

  Args:
    feature_hw: static (H, W) of the level's canvas map.
    valid_hw: (..., 2) int array, the per-image valid map size
      (ceil(pad_shape / stride)).
    num_base: anchors per cell, A.
  """
  import jax.numpy as jnp  # Local: keep this module importable without jax.
  h, w = feature_hw
  ys = jnp.arange(h)[:, None, None]
  xs = jnp.arange(w)[None, :, None]
  valid_hw = jnp.asarray(valid_hw)
  vh = valid_hw[..., 0][..., None, None, None]
  vw = valid_hw[..., 1][..., None, None, None]
  flags = (ys < vh) & (xs < vw)
  flags = jnp.broadcast_to(flags, flags.shape[:-1] + (num_base,))
  return flags.reshape(flags.shape[:-3] + (h * w * num_base,))
