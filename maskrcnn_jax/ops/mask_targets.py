"""28x28 mask targets of positive RoIs, as MMDetection's `mask_target`.

Two GT mask representations:
  * compact (training default): each GT mask resampled onto a fixed S x S
    grid over its own GT box (`maskrcnn_jax.data.transforms`, uint8 coverage
    0..255); the target of a RoI is the box-filter average of that grid over
    each of the RoI's 28 x 28 bins, thresholded at 0.5
    (`transforms.crop_and_resize_to_roi` is the numpy reference);
  * exact (training default for bitmap recipes, `train.mask_target`): the
    full-size masks on the canvas, bit-packed along W ((M, Hc, Wc / 8)
    uint8, 1/8 of a byte per pixel: 13 MB per COCO image at 100 instances on
    800 x 1344); the target is exactly MMDetection's
    `roi_align(mask, roi, 28, 1.0, 0, 'avg', True) >= 0.5`
    (`mask_target` on BitmapMasks, poly2mask=True). Each RoI unpacks only its
    own GT's bitmap. tools/loss_report.py reproduces MMDetection's losses
    with it.
In both, RoIs are first clipped to the padded mask size (MMDetection clips
proposals to the mask's width and height).
"""

import jax
import jax.numpy as jnp

from maskrcnn_jax.ops import roi_align as roi_ops

MASK_TARGETS = ('auto', 'exact', 'compact')


def training_mask_mode(config) -> str:
  """'exact' or 'compact': the targets `config.train.mask_target` selects.

  'auto' (default): exact MMDetection targets for bitmap recipes
  (`mask_format='bitmap'`, poly2mask=True); compact for polygon recipes,
  whose MMDetection targets rasterise polygons per RoI on the host
  (`PolygonMasks.crop_and_resize`), which the device step does not do.
  """
  t = config.train
  mode = t.get('mask_target', 'auto')
  if mode not in MASK_TARGETS:
    raise ValueError(f'train.mask_target must be one of {list(MASK_TARGETS)}'
                     f', got {mode!r}')
  if mode == 'auto':
    return 'exact' if t.mask_format == 'bitmap' else 'compact'
  if mode == 'exact' and t.mask_format != 'bitmap':
    raise ValueError("train.mask_target='exact' needs train.mask_format="
                     f"'bitmap' (got {t.mask_format!r}); polygon recipes "
                     "train with 'compact' targets")
  return mode


def _area_weights(lo, hi, n: int, src_lo, src_step, src_n: int):
  """Box-filter weights (R, n, src_n) between [lo, hi] split in n cells and
  src_n source cells starting at src_lo with size src_step (all (R,))."""
  hi = jnp.maximum(hi, lo + 1e-6)
  t = jnp.arange(n + 1, dtype=jnp.float32) / n
  d = lo[:, None] + (hi - lo)[:, None] * t[None, :]  # (R, n+1)
  s = src_lo[:, None] + src_step[:, None] * jnp.arange(
      src_n + 1, dtype=jnp.float32)[None, :]  # (R, src_n+1)
  overlap = (jnp.minimum(d[:, 1:, None], s[:, None, 1:]) -
             jnp.maximum(d[:, :-1, None], s[:, None, :-1]))
  return jnp.maximum(overlap, 0.0) / (d[:, 1:] - d[:, :-1])[..., None]


def _clip_rois(rois, clip_hw):
  """Clips (R, 4) rois to clip_hw: (2,) for all, or (R, 2) per RoI."""
  h = clip_hw[..., 0].astype(jnp.float32)
  w = clip_hw[..., 1].astype(jnp.float32)
  return jnp.stack([jnp.clip(rois[:, 0], 0, w), jnp.clip(rois[:, 1], 0, h),
                    jnp.clip(rois[:, 2], 0, w), jnp.clip(rois[:, 3], 0, h)],
                   axis=-1)


def compact_mask_targets(gt_masks, gt_boxes, rois, gt_index, clip_hw,
                         out_size: int = 28):
  """Targets from compact masks.

  Args:
    gt_masks: (M, S, S) uint8 coverage (0..255) over each GT box.
    gt_boxes: (M, 4) XYXY boxes the grids cover.
    rois: (R, 4) XYXY positive RoIs; gt_index: (R,) int32 assigned GT.
    clip_hw: (2,) padded image size, or (R, 2) each RoI's.

  Returns:
    (R, out_size, out_size) float32 in {0, 1}.
  """
  s = gt_masks.shape[-1]
  rois = _clip_rois(rois, clip_hw)
  g = gt_boxes[gt_index]
  wy = _area_weights(rois[:, 1], rois[:, 3], out_size, g[:, 1],
                     (g[:, 3] - g[:, 1]) / s, s)
  wx = _area_weights(rois[:, 0], rois[:, 2], out_size, g[:, 0],
                     (g[:, 2] - g[:, 0]) / s, s)
  grids = gt_masks[gt_index].astype(jnp.float32) / 255.0
  out = jnp.einsum('rpa,rab,rqb->rpq', wy, grids, wx,
                   precision=jax.lax.Precision.HIGHEST)
  return (out >= 0.5).astype(jnp.float32)


def bitmap_mask_targets(gt_masks, rois, gt_index, out_size: int = 28,
                        batch_size: int = 16, packed: bool = False):
  """Exact MMDetection targets from full-size bitmaps.

  Args:
    gt_masks: (M, H, W) {0, 1} masks at the padded image size, or with
      packed=True (M, H, W / 8) uint8 of np.packbits(axis=-1,
      bitorder='little').
    rois: (R, 4) XYXY; gt_index: (R,) int32.

  Returns:
    (R, out_size, out_size) float32 in {0, 1}.
  """
  m, h, w = gt_masks.shape
  if packed:
    w *= 8
  rois = _clip_rois(rois, jnp.array([h, w]))
  r = rois.shape[0]
  one = jnp.ones((r,), jnp.float32)
  size_h = jnp.full((r,), h, jnp.int32)
  size_w = jnp.full((r,), w, jnp.int32)
  zero = jnp.zeros((r,), jnp.int32)
  sy, by, gy, _, _ = roi_ops._axis_geometry(  # pylint: disable=protected-access
      rois[:, 1], rois[:, 3], one, out_size, size_h)
  sx, bx, gx, _, _ = roi_ops._axis_geometry(  # pylint: disable=protected-access
      rois[:, 0], rois[:, 2], one, out_size, size_w)
  wy = roi_ops._axis_weights(sy, by, gy, zero, size_h, out_size,  # pylint: disable=protected-access
                             h // out_size + 2, h)
  wx = roi_ops._axis_weights(sx, bx, gx, zero, size_w, out_size,  # pylint: disable=protected-access
                             w // out_size + 2, w)

  def one_roi(args):
    ay, ax, g = args
    mask = gt_masks[g]
    if packed:
      mask = jnp.unpackbits(mask, axis=-1, bitorder='little')
    hi = jax.lax.Precision.HIGHEST
    return jnp.matmul(jnp.matmul(ay, mask.astype(jnp.float32), precision=hi),
                      ax.T, precision=hi)

  out = jax.lax.map(one_roi, (wy, wx, gt_index), batch_size=batch_size)
  return (out >= 0.5).astype(jnp.float32)
