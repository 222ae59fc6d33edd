"""Training transforms (MMDetection's pipeline) producing fixed-shape examples.

Pipeline, as MMDetection 3.3.0 `coco_instance.py` / `ms-poly_3x`:
`LoadImageFromFile` (cv2, BGR, EXIF applied) -> `LoadAnnotations(with_bbox,
with_mask, poly2mask)` -> `Resize(keep_ratio=True)` (or `RandomChoiceResize` /
`RandomResize`) -> `RandomFlip(0.5, horizontal)` -> pad to 32 (on a fixed
canvas here). Normalisation happens on the device, not here.

* Resize: the (long, short) scale comes from `train.scale_mode`:
  'fixed' = `scales[0]`; 'choice' = `scales[rng.integers(len(scales))]`
  (RandomChoiceResize); 'range' = mmcv `RandomResize._random_sample`: long
  edge `rng.integers(min, max + 1)` over the scales' long edges, short edge
  `rng.integers(min, max + 1)` over their short edges ((1333, 640)-(1333, 800)
  -> long 1333, short uniform in [640, 800]); then the keep-ratio rescale of
  `preprocess.resize_keep_ratio` (cv2 INTER_LINEAR, mmcv rounding).
  `scale_factor = (new_w / w, new_h / h)`.
* Boxes (float32, as MMDetection's tensors): `box * (w_s, h_s, w_s, h_s)`,
  clipped to the resized image; flip `x1' = W - x2, x2' = W - x1`.
  Ignored (crowd) boxes get the same treatment.
* Random draws, in this order from the example's own `np.random.Generator`:
  the scale (none for 'fixed'), then `rng.random() < flip_prob`.

Masks: for bitmap recipes with exact targets (`train.mask_target` 'auto' or
'exact', the default), `gt_bitmaps` holds the full MMDetection BitmapMasks
(decoded, nearest-resized, flipped) on the canvas, bit-packed along W
((max_instances, Hc, Wc / 8) uint8, `pack_bitmaps`), from which training
computes MMDetection's exact 28x28 targets. Every recipe also stores each GT
instance as a COMPACT mask (the only form with `mask_target='compact'` and
for polygon recipes): its mask restricted to its own final GT box (resized,
flipped, clipped) and resampled to a fixed `mask_crop` x `mask_crop` grid (uint8,
0..255 = covered fraction). Design:

* Bitmap configs (`mask_format='bitmap'`, MMDetection `poly2mask=True`):
  polygons / RLE are decoded with pycocotools at the ORIGINAL size, resized
  with cv2 INTER_NEAREST to the resized image size, flipped with `np.flip`
  (exactly MMDetection's BitmapMasks), then each mask's GT-box window is
  area-averaged onto the crop grid: cell (a, b) holds the fraction of the
  cell [x1 + b*cw, x1 + (b+1)*cw] x [y1 + a*ch, ...] (cw = (x2-x1)/S) that
  the bitmap covers (exact box filter, separable: `Wy @ window @ Wx.T` with
  `area_weights`).
* Polygon configs (`mask_format='polygon'`, MMDetection `poly2mask=False`):
  polygons are scaled (float64) and flipped (`x' = W - x`), then rasterised
  with pycocotools straight onto the crop grid of their GT box (values 0 or
  255). MMDetection's rule that a non-polygon (RLE) instance is ignored with
  PolygonMasks applies: such instances move to the ignored boxes. Polygon
  configs also carry the transformed polygons, padded to fixed size:
  `gt_polygons` (max_instances, max_polygon_vertices, 2) float32 vertex
  (x, y) and `gt_polygon_ids` (max_instances, max_polygon_vertices) int32,
  the polygon index within the instance (vertices of a polygon are
  contiguous; -1 = padding), enough to rasterise MMDetection's 28x28 polygon
  targets per RoI (`polygon_targets` does it on the CPU, exactly as
  `PolygonMasks.crop_and_resize(...).to_ndarray()`). An instance with more
  than `max_polygon_vertices` vertices is simplified with cv2.approxPolyDP
  (growing tolerance) until it fits; its compact mask uses the exact polygon.

How training turns compact masks into 28x28 targets per positive RoI: with
`g` the RoI's assigned GT, `C = gt_masks[g] / 255` covering `gt_boxes[g]`,
the target is `(Wy @ C @ Wx.T) >= 0.5` where `Wy` (28, S) / `Wx` (28, S) are
`area_weights` of the RoI's 28 bins against the S crop cells of the GT box
(each entry = overlap length / bin length; cells outside the GT box count as
empty). `crop_and_resize_to_roi` is the NumPy reference; it is a batched
einsum on the device. MMDetection's own target is `roi_align(full bitmap,
RoI, 28, aligned=True) >= 0.5`: the compact route differs only by the crop
resolution (S = 112 is 4x the 28x28 target for a RoI the size of its GT box)
and by box filtering instead of bilinear sampling at the mask edge; mask
pixels outside their own GT box (nearest-resize slivers, annotations whose
bbox and segmentation disagree) are dropped.

Fixed shapes: at most `max_instances` GT instances (the FIRST ones in
annotation order are kept; the number left out is `gt_num_dropped`; the data
pipeline counts and logs affected images once) and `max_ignored` ignored boxes
(same rule). Padding: boxes 0, labels -1, valid False, masks 0.

The image is placed top-left on a zero canvas (Hc, Wc) chosen with
`preprocess.choose_canvas` for the image's ORIENTATION (portrait iff
width < height, MMDetection's AspectRatioBatchSampler buckets): the canvas
holding the largest padded size any scale of the recipe can produce for that
orientation, so all images of one bucket share a canvas and batch together.
"""

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util

from maskrcnn_jax import preprocess
from maskrcnn_jax.data import coco

SCALE_MODES = ('fixed', 'choice', 'range')
MASK_FORMATS = ('bitmap', 'polygon')


@dataclasses.dataclass(frozen=True)
class TransformConfig:
  """Everything the transforms need (see `from_config`)."""
  scale_mode: str = 'fixed'
  scales: Tuple[Tuple[int, int], ...] = ((1333, 800),)
  flip_prob: float = 0.5
  mask_format: str = 'bitmap'
  with_masks: bool = True
  max_instances: int = 100
  max_ignored: int = 32
  mask_crop: int = 112
  # Also emit `gt_bitmaps`: the full bitmaps on the canvas, bit-packed, for
  # exact MMDetection mask targets (`train.mask_target`, bitmap recipes).
  exact_masks: bool = False
  max_polygon_vertices: int = 256
  canvases: Tuple[Tuple[int, int], ...] = ((800, 1344), (1344, 800))
  size_divisor: int = 32

  def __post_init__(self):
    object.__setattr__(self, 'scales',
                       tuple(tuple(int(v) for v in s) for s in self.scales))
    object.__setattr__(self, 'canvases',
                       tuple(tuple(int(v) for v in c) for c in self.canvases))
    if self.scale_mode not in SCALE_MODES:
      raise ValueError(f'unknown scale_mode {self.scale_mode!r}: one of '
                       f'{SCALE_MODES}')
    if self.mask_format not in MASK_FORMATS:
      raise ValueError(f'unknown mask_format {self.mask_format!r}: one of '
                       f'{MASK_FORMATS}')
    if not self.scales or any(len(s) != 2 or min(s) <= 0
                              for s in self.scales):
      raise ValueError(f'scales must be (long, short) pairs, got '
                       f'{self.scales}')
    if self.scale_mode == 'range' and len(self.scales) != 2:
      raise ValueError("scale_mode 'range' needs exactly two scales "
                       f'(lower, upper), got {self.scales}')
    if self.exact_masks and self.mask_format != 'bitmap':
      raise ValueError('exact mask targets need mask_format bitmap, got '
                       f'{self.mask_format!r}')
    if not 0.0 <= self.flip_prob <= 1.0:
      raise ValueError(f'flip_prob {self.flip_prob} not in [0, 1]')
    for name in ('max_instances', 'max_ignored', 'mask_crop',
                 'max_polygon_vertices', 'size_divisor'):
      if getattr(self, name) <= 0:
        raise ValueError(f'{name} must be positive')

  @classmethod
  def from_config(cls, config, train: bool = True,
                  with_masks: Optional[bool] = None) -> 'TransformConfig':
    """From a project config: `train.*` augmentation, `input.*` canvases.

    train=False gives the test recipe (single scale `input.test_scale`, no
    flip, no masks unless asked).
    """
    # Imported here: the data module itself does not need jax.
    from maskrcnn_jax.ops import mask_targets  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    t, inp = config.train, config.input
    common = dict(
        exact_masks=mask_targets.training_mask_mode(config) == 'exact',
        max_instances=int(t.max_instances),
        max_ignored=int(t.get('max_ignored', cls.max_ignored)),
        mask_crop=int(t.get('mask_crop', cls.mask_crop)),
        max_polygon_vertices=int(t.get('max_polygon_vertices',
                                       cls.max_polygon_vertices)),
        canvases=tuple(tuple(c) for c in inp.canvases),
        size_divisor=int(inp.size_divisor),
        mask_format=str(t.mask_format))
    if train:
      return cls(scale_mode=str(t.scale_mode),
                 scales=tuple(tuple(s) for s in t.scales),
                 flip_prob=float(t.flip_prob),
                 with_masks=True if with_masks is None else with_masks,
                 **common)
    return cls(scale_mode='fixed', scales=(tuple(inp.test_scale),),
               flip_prob=0.0, with_masks=bool(with_masks), **common)

  @property
  def max_scale(self) -> Tuple[int, int]:
    """(long, short) upper bounds of every scale the recipe can draw."""
    return (max(max(s) for s in self.scales), max(min(s) for s in self.scales))


def _pad(n: int, d: int) -> int:
  return -(-n // d) * d


def canvas_for(height: int, width: int, cfg: TransformConfig) -> Tuple[int, int]:
  """Canvas (Hc, Wc) of an image's orientation bucket (width < height)."""
  long_edge, short_edge = cfg.max_scale
  if width < height:
    need = (_pad(long_edge, cfg.size_divisor), _pad(short_edge,
                                                    cfg.size_divisor))
  else:
    need = (_pad(short_edge, cfg.size_divisor), _pad(long_edge,
                                                     cfg.size_divisor))
  return preprocess.choose_canvas(need, cfg.canvases)


def sample_scale(cfg: TransformConfig,
                 rng: np.random.Generator) -> Tuple[int, int]:
  """The (long, short) resize bound of one example (see module docstring)."""
  if cfg.scale_mode == 'fixed':
    return cfg.scales[0]
  if cfg.scale_mode == 'choice':
    return cfg.scales[int(rng.integers(len(cfg.scales)))]
  (a0, a1), (b0, b1) = cfg.scales
  edge0 = int(rng.integers(min(a0, b0), max(a0, b0) + 1))
  edge1 = int(rng.integers(min(a1, b1), max(a1, b1) + 1))
  return edge0, edge1


# ---------------------------------------------------------------------------
# Compact masks.
# ---------------------------------------------------------------------------

def area_weights(lo: float, hi: float, n: int, src_lo: float, src_step: float,
                 src_n: int) -> np.ndarray:
  """Box-filter resampling weights between two regular 1-D grids.

  Destination: n cells splitting [lo, hi]. Source: src_n cells
  [src_lo + k*src_step, src_lo + (k+1)*src_step]. Entry (i, k) is the length
  of the overlap of destination cell i and source cell k divided by the
  destination cell length, so `W @ values` averages a piecewise-constant
  source over each destination cell (anything outside the source grid counts
  as 0). A zero-length destination degenerates to point sampling.

  Returns:
    (n, src_n) float64.
  """
  lo, hi = float(lo), float(hi)
  if hi - lo < 1e-6:
    hi = lo + 1e-6
  d = lo + (hi - lo) * np.arange(n + 1, dtype=np.float64) / n
  s = float(src_lo) + float(src_step) * np.arange(src_n + 1, dtype=np.float64)
  overlap = (np.minimum(d[1:, None], s[None, 1:])
             - np.maximum(d[:-1, None], s[None, :-1]))
  return np.maximum(overlap, 0.0) / (d[1:] - d[:-1])[:, None]


def crop_bitmap(mask: np.ndarray, box: Sequence[float], size: int) -> np.ndarray:
  """Compact form of a (H, W) {0,1} mask over `box`: (size, size) uint8 0..255.

  Cell values are the covered fraction of each of the size x size cells of
  the box (exact box filter, the same as `area_weights` resampling), rounded
  to 1/255. Computed with a summed-area table: the integral of a
  piecewise-constant image is exactly the bilinear interpolation of its
  integral image, so each cell costs four lookups.
  """
  x1, y1, x2, y2 = (float(v) for v in box)
  h, w = mask.shape
  c0, c1 = max(int(np.floor(x1)), 0), min(int(np.ceil(x2)), w)
  r0, r1 = max(int(np.floor(y1)), 0), min(int(np.ceil(y2)), h)
  if c1 <= c0 or r1 <= r0:
    return np.zeros((size, size), np.uint8)
  sat = np.zeros((r1 - r0 + 1, c1 - c0 + 1), np.int32)  # exact counts
  np.cumsum(np.cumsum(mask[r0:r1, c0:c1], axis=0, dtype=np.int32), axis=1,
            out=sat[1:, 1:])

  def grid(lo, hi, origin, n_pix):
    if hi - lo < 1e-6:
      hi = lo + 1e-6
    t = lo + (hi - lo) * np.arange(size + 1, dtype=np.float64) / size
    t = np.clip(t - origin, 0.0, n_pix)
    i0 = np.minimum(np.floor(t).astype(np.int64), n_pix - 1)
    return i0, t - i0, (hi - lo) / size

  yi, yf, ch = grid(y1, y2, r0, r1 - r0)
  xi, xf, cw = grid(x1, x2, c0, c1 - c0)
  a = sat[yi[:, None], xi[None, :]].astype(np.float64)
  b = sat[yi[:, None], xi[None, :] + 1].astype(np.float64)
  c = sat[yi[:, None] + 1, xi[None, :]].astype(np.float64)
  d = sat[yi[:, None] + 1, xi[None, :] + 1].astype(np.float64)
  fy, fx = yf[:, None], xf[None, :]
  f = (a * (1 - fy) * (1 - fx) + b * (1 - fy) * fx + c * fy * (1 - fx)
       + d * fy * fx)
  cell = (f[1:, 1:] - f[:-1, 1:] - f[1:, :-1] + f[:-1, :-1]) / (ch * cw)
  return np.clip(np.rint(cell * 255.0), 0, 255).astype(np.uint8)


def rasterize_polygons(polygons: Sequence[np.ndarray], box: Sequence[float],
                       size: int, mmdet_guard: bool = True) -> np.ndarray:
  """MMDetection PolygonMasks.crop_and_resize + to_ndarray for one instance.

  Shifts the polygons by (x1, y1), scales them by size / max(w, 1) (and
  size / max(h, 1)) (with mmdet_guard; otherwise by size / w exactly, for
  compact crops) and rasterises them with pycocotools at size x size.

  Returns:
    (size, size) uint8 {0, 1}.
  """
  x1, y1, x2, y2 = (float(v) for v in box)
  if mmdet_guard:
    w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    w_scale, h_scale = size / max(w, 0.1), size / max(h, 0.1)
  else:
    w_scale, h_scale = size / max(x2 - x1, 1e-6), size / max(y2 - y1, 1e-6)
  polys = []
  for p in polygons:
    if len(p) < 6:  # pycocotools would read 4 numbers as a box
      continue
    p = np.array(p, np.float64)
    p[0::2] = (p[0::2] - x1) * w_scale
    p[1::2] = (p[1::2] - y1) * h_scale
    polys.append(p)
  if not polys:
    return np.zeros((size, size), np.uint8)
  rle = mask_util.merge(mask_util.frPyObjects(polys, size, size))
  return mask_util.decode(rle)


def polygon_targets(polygons: Sequence[np.ndarray], rois: np.ndarray,
                    out_size: int = 28) -> np.ndarray:
  """MMDetection's polygon mask targets: (R, out, out) uint8 {0, 1}."""
  rois = np.asarray(rois, np.float64).reshape(-1, 4)
  return np.stack([rasterize_polygons(polygons, r, out_size) for r in rois]
                  ) if len(rois) else np.zeros((0, out_size, out_size),
                                               np.uint8)


def crop_and_resize_to_roi(compact: np.ndarray, gt_box: Sequence[float],
                           rois: np.ndarray, out_size: int = 28,
                           clip_hw: Optional[Sequence[int]] = None,
                           threshold: Optional[float] = 0.5) -> np.ndarray:
  """28x28 mask targets of RoIs from one GT instance's compact mask.

  Args:
    compact: (S, S) uint8 (0..255) or float in [0, 1], covering `gt_box`.
    gt_box: (4,) XYXY of the compact grid (the GT box).
    rois: (R, 4) XYXY proposals assigned to this GT.
    out_size: target size (MMDetection mask_size 28).
    clip_hw: (H, W): clip the RoIs to [0, W] x [0, H] first, as
      MMDetection's `mask_target` does with the (padded) mask size.
    threshold: binarise with `>=` (MMDetection: 0.5); None keeps the
      covered fraction.

  Returns:
    (R, out_size, out_size) float32.
  """
  arr = np.asarray(compact)
  c = arr.astype(np.float32)
  if np.issubdtype(arr.dtype, np.integer):
    c /= 255.0
  s = c.shape[0]
  rois = np.array(rois, np.float64).reshape(-1, 4)
  if clip_hw is not None:
    rois[:, 0::2] = np.clip(rois[:, 0::2], 0, clip_hw[1])
    rois[:, 1::2] = np.clip(rois[:, 1::2], 0, clip_hw[0])
  gx1, gy1, gx2, gy2 = (float(v) for v in gt_box)
  step_x, step_y = (gx2 - gx1) / s, (gy2 - gy1) / s
  out = np.zeros((len(rois), out_size, out_size), np.float32)
  for i, (x1, y1, x2, y2) in enumerate(rois):
    wy = area_weights(y1, y2, out_size, gy1, step_y, s).astype(np.float32)
    wx = area_weights(x1, x2, out_size, gx1, step_x, s).astype(np.float32)
    out[i] = wy @ c @ wx.T
  if threshold is not None:
    out = (out >= threshold).astype(np.float32)
  return out


def paste_compact(compact: np.ndarray, box: Sequence[float],
                  hw: Sequence[int]) -> np.ndarray:
  """Re-expands a compact mask to a (H, W) float32 coverage image."""
  c = np.asarray(compact, np.float32) / 255.0
  s = c.shape[0]
  x1, y1, x2, y2 = (float(v) for v in box)
  h, w = int(hw[0]), int(hw[1])
  wy = area_weights(0, h, h, y1, (y2 - y1) / s, s).astype(np.float32)
  wx = area_weights(0, w, w, x1, (x2 - x1) / s, s).astype(np.float32)
  return wy @ c @ wx.T


def simplify_polygons(polygons: Sequence[np.ndarray],
                      max_vertices: int) -> List[np.ndarray]:
  """Reduces an instance's polygons to at most `max_vertices` vertices.

  cv2.approxPolyDP with a tolerance doubling from 0.25 px; polygons that
  fall below 3 vertices are dropped (the largest one always stays).
  Unchanged when it already fits.
  """
  total = sum(len(p) // 2 for p in polygons)
  if total <= max_vertices:
    return list(polygons)
  eps = 0.25
  order = np.argsort([-len(p) for p in polygons], kind='stable')
  while eps < 1e7:
    out = []
    for k in order:
      pts = np.asarray(polygons[k], np.float32).reshape(-1, 1, 2)
      approx = cv2.approxPolyDP(pts, eps, True).reshape(-1).astype(np.float64)
      if len(approx) >= 6 or not out:
        out.append(approx)
    if sum(len(p) // 2 for p in out) <= max_vertices:
      return out
    eps *= 2.0
  return [np.asarray(polygons[order[0]], np.float64)[:2 * max_vertices]]


def polygons_from_padded(gt_polygons: np.ndarray, gt_polygon_ids: np.ndarray
                         ) -> List[List[np.ndarray]]:
  """Inverse of the padded polygon layout: per instance, flat float polygons.

  Args:
    gt_polygons: (N, V, 2) vertices.
    gt_polygon_ids: (N, V) polygon index within the instance, -1 padding.
  """
  out = []
  for verts, ids in zip(np.asarray(gt_polygons), np.asarray(gt_polygon_ids)):
    polys = []
    for k in range(int(ids.max(initial=-1)) + 1):
      polys.append(verts[ids == k].astype(np.float64).reshape(-1))
    out.append(polys)
  return out


# ---------------------------------------------------------------------------
# The transform.
# ---------------------------------------------------------------------------

def _to_rle(seg: coco.Segmentation, h: int, w: int):
  if isinstance(seg, dict):
    return {'size': [h, w], 'counts': seg['counts']}
  return mask_util.merge(mask_util.frPyObjects(list(seg), h, w))


def _resized_bitmaps(masks: Sequence[coco.Segmentation], h: int, w: int,
                     new_h: int, new_w: int, flip: bool) -> np.ndarray:
  """MMDetection BitmapMasks: decode, nearest rescale, flip -> (h', w', N)."""
  full = mask_util.decode([_to_rle(m, h, w) for m in masks])  # (h, w, N)
  chunks = []
  for s in range(0, full.shape[2], 512):  # cv2 handles <= 512 channels
    part = np.ascontiguousarray(full[:, :, s:s + 512])
    r = cv2.resize(part, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    chunks.append(r.reshape(new_h, new_w, -1))
  out = chunks[0] if len(chunks) == 1 else np.concatenate(chunks, axis=2)
  if flip:
    out = out[:, ::-1]
  return out


def pack_bitmaps(bitmaps: np.ndarray) -> np.ndarray:
  """(..., H, W) {0, 1} -> (..., H, W / 8) uint8, little bit order (the
  layout `ops.mask_targets.bitmap_mask_targets(packed=True)` reads)."""
  if bitmaps.shape[-1] % 8:
    raise ValueError(f'bitmap width {bitmaps.shape[-1]} is not a multiple '
                     'of 8 (canvas sizes must be multiples of 32)')
  return np.packbits(bitmaps.astype(bool), axis=-1, bitorder='little')


def transform_polygons(polygons: Sequence[np.ndarray], scale_factor,
                       flip_width: Optional[int]) -> List[np.ndarray]:
  """MMDetection PolygonMasks rescale (float64) then horizontal flip."""
  w_s, h_s = scale_factor
  out = []
  for p in polygons:
    p = np.array(p, np.float64)
    p[0::2] = p[0::2] * w_s
    p[1::2] = p[1::2] * h_s
    if flip_width is not None:
      p[0::2] = flip_width - p[0::2]
    out.append(p)
  return out


def _transform_boxes(boxes: np.ndarray, sf: np.ndarray, new_h: int,
                     new_w: int, flip: bool) -> np.ndarray:
  b = np.asarray(boxes, np.float32).reshape(-1, 4) * np.concatenate([sf, sf])
  b[:, 0::2] = np.clip(b[:, 0::2], 0, new_w)
  b[:, 1::2] = np.clip(b[:, 1::2], 0, new_h)
  if flip:
    b = np.stack([new_w - b[:, 2], b[:, 1], new_w - b[:, 0], b[:, 3]], axis=1)
  return b.astype(np.float32)


def example_spec(cfg: TransformConfig) -> Dict[str, Tuple[Tuple[int, ...], Any]]:
  """Per-example key -> (shape, dtype); the canvas is (None, None, 3)."""
  n, m, s = cfg.max_instances, cfg.max_ignored, cfg.mask_crop
  spec = {
      'image': ((None, None, 3), np.uint8),
      'image_hw': ((2,), np.int32),
      'pad_hw': ((2,), np.int32),
      'ori_hw': ((2,), np.int32),
      'scale_factor': ((2,), np.float32),
      'flip': ((), np.bool_),
      'image_id': ((), np.int64),
      'gt_boxes': ((n, 4), np.float32),
      'gt_labels': ((n,), np.int32),
      'gt_valid': ((n,), np.bool_),
      'gt_num_dropped': ((), np.int32),
      'gt_ignored_boxes': ((m, 4), np.float32),
      'gt_ignored_labels': ((m,), np.int32),
      'gt_ignored_valid': ((m,), np.bool_),
  }
  if cfg.with_masks:
    spec['gt_masks'] = ((n, s, s), np.uint8)
    if cfg.exact_masks:
      spec['gt_bitmaps'] = ((n, None, None), np.uint8)  # (n, Hc, Wc / 8)
    if cfg.mask_format == 'polygon':
      v = cfg.max_polygon_vertices
      spec['gt_polygons'] = ((n, v, 2), np.float32)
      spec['gt_polygon_ids'] = ((n, v), np.int32)
  return spec


def train_transform(record: coco.CocoRecord, image: np.ndarray,
                    rng: np.random.Generator,
                    cfg: TransformConfig) -> Dict[str, np.ndarray]:
  """Applies the pipeline to one decoded image; returns a fixed-shape example.

  Args:
    record: the image's annotations.
    image: uint8 BGR (H, W, 3) as decoded (`coco.load_image`).
    rng: this example's generator (scale draw, then flip draw).
    cfg: the recipe.

  Returns:
    dict, shapes as `example_spec(cfg)` with the canvas of `canvas_for`.
  """
  h, w = image.shape[:2]
  if (h, w) != (record.height, record.width):
    raise ValueError(f'image {record.file_name} (image id {record.image_id}) '
                     f'is {(h, w)}, annotations say '
                     f'{(record.height, record.width)}')
  scale = sample_scale(cfg, rng)
  flip = bool(rng.random() < cfg.flip_prob)

  resized = preprocess.resize_keep_ratio(image, scale)
  new_h, new_w = resized.shape[:2]
  sf = np.array([new_w / w, new_h / h], np.float32)
  if flip:
    resized = resized[:, ::-1]
  pad_hw = (_pad(new_h, cfg.size_divisor), _pad(new_w, cfg.size_divisor))
  ch, cw = canvas_for(h, w, cfg)
  if pad_hw[0] > ch or pad_hw[1] > cw:
    raise ValueError(f'padded size {pad_hw} exceeds canvas {(ch, cw)}')
  canvas = np.zeros((ch, cw, 3), np.uint8)
  canvas[:new_h, :new_w] = resized

  # Instances (polygon recipes ignore RLE instances, like PolygonMasks).
  keep = np.arange(record.num_instances)
  ign_boxes = [record.ignored_boxes]
  ign_labels = [record.ignored_labels]
  if cfg.with_masks and cfg.mask_format == 'polygon':
    is_rle = np.array([isinstance(m, dict) for m in record.masks], bool)
    if is_rle.any():
      ign_boxes.append(record.boxes[is_rle])
      ign_labels.append(record.labels[is_rle])
      keep = keep[~is_rle]
  num_dropped = max(len(keep) - cfg.max_instances, 0)
  keep = keep[:cfg.max_instances]
  n = len(keep)

  out_n = cfg.max_instances
  boxes = np.zeros((out_n, 4), np.float32)
  labels = np.full((out_n,), -1, np.int32)
  valid = np.zeros((out_n,), bool)
  fb = _transform_boxes(record.boxes[keep], sf, new_h, new_w, flip)
  boxes[:n] = fb
  labels[:n] = record.labels[keep]
  valid[:n] = True

  ib = np.concatenate(ign_boxes).reshape(-1, 4)[:cfg.max_ignored]
  il = np.concatenate(ign_labels)[:cfg.max_ignored]
  m = len(ib)
  ig_boxes = np.zeros((cfg.max_ignored, 4), np.float32)
  ig_labels = np.full((cfg.max_ignored,), -1, np.int32)
  ig_valid = np.zeros((cfg.max_ignored,), bool)
  ig_boxes[:m] = _transform_boxes(ib, sf, new_h, new_w, flip)
  ig_labels[:m] = il
  ig_valid[:m] = True

  ex = dict(
      image=canvas,
      image_hw=np.array([new_h, new_w], np.int32),
      pad_hw=np.array(pad_hw, np.int32),
      ori_hw=np.array([h, w], np.int32),
      scale_factor=sf,
      flip=np.bool_(flip),
      image_id=np.int64(record.image_id),
      gt_boxes=boxes, gt_labels=labels, gt_valid=valid,
      gt_num_dropped=np.int32(num_dropped),
      gt_ignored_boxes=ig_boxes, gt_ignored_labels=ig_labels,
      gt_ignored_valid=ig_valid)
  if not cfg.with_masks:
    return ex

  s = cfg.mask_crop
  masks = np.zeros((out_n, s, s), np.uint8)
  segs = [record.masks[k] for k in keep]
  if cfg.mask_format == 'bitmap':
    if cfg.exact_masks:
      full = np.zeros((out_n, ch, cw), np.uint8)
    if n:
      bitmaps = _resized_bitmaps(segs, h, w, new_h, new_w, flip)
      for i in range(n):
        masks[i] = crop_bitmap(bitmaps[:, :, i], fb[i], s)
      if cfg.exact_masks:
        full[:n, :new_h, :new_w] = np.moveaxis(bitmaps, -1, 0)
    if cfg.exact_masks:
      ex['gt_bitmaps'] = pack_bitmaps(full)
  else:
    v = cfg.max_polygon_vertices
    polys_arr = np.zeros((out_n, v, 2), np.float32)
    ids_arr = np.full((out_n, v), -1, np.int32)
    for i, seg in enumerate(segs):
      polys = transform_polygons(seg, (float(sf[0]), float(sf[1])),
                                 new_w if flip else None)
      masks[i] = rasterize_polygons(polys, fb[i], s, mmdet_guard=False) * 255
      polys = simplify_polygons(polys, v)
      start = 0
      for k, p in enumerate(polys):
        nv = len(p) // 2
        polys_arr[i, start:start + nv] = p.reshape(-1, 2)
        ids_arr[i, start:start + nv] = k
        start += nv
    ex['gt_polygons'] = polys_arr
    ex['gt_polygon_ids'] = ids_arr
  ex['gt_masks'] = masks
  return ex
