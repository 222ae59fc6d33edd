"""Multi-level RoIAlign with mmcv semantics (aligned=True, adaptive sampling).

mmcv's RoIAlign averages, per output bin, `grid_h x grid_w` bilinear samples
where `grid = ceil(roi_size / output_size)` depends on the RoI, so the number
of samples is data dependent. Bilinear sampling is separable, so for one RoI

    out[ph, pw, c] = sum_{y, x} Ay[ph, y] * Ax[pw, x] * F[y, x, c]

with per-axis weights Ay (sum of the bilinear "hat" weights of the bin's
samples, divided by grid_h) and likewise Ax. This is exact (up to float
summation order) for any sample count.

Ay and Ax are non-zero only on a window of about (roi_h + 2) x (roi_w + 2)
feature cells. The window is gathered into a fixed-size buffer of s*s cells
laid out as (major, minor) with a power-of-two minor length m: k = major * m
+ minor. Viewing the buffer as (s, s) = (a, b), the minor index is b % m and
the major index a * (s // m) + b // m, so the contraction stays two cheap
einsums whatever the RoI's aspect ratio. RoIs are sorted by the window they
need and processed in chunks; each chunk uses the smallest of a few window
sizes ("tiers") that covers all its RoIs, chosen with `lax.switch`, so the
work follows the real RoI sizes while every shape stays static.

For small maps (the quick start's 256 x 192 canvas: P2 is 48 x 64 cells)
the 'dense' strategy skips the window gather altogether: Ay and Ax span
their level's whole map (zero on the other levels) and each image's RoIs
are two batched matmuls per level, with a backward of two more (no
gather, no scatter; a custom VJP keeps every product in dot_general's
canonical layout, so XLA:CPU copies nothing). Its cost grows with the map
area, so it is for small canvases only.

Level assignment is MMDetection's `SingleRoIExtractor.map_roi_levels`:
`floor(log2(sqrt(w * h) / finest_scale + 1e-6))` clamped to the levels.
"""

import functools
import math
from typing import NamedTuple, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from maskrcnn_jax.ops import buffers

DEFAULT_TIERS = (8, 16, 32, 64)
# Tiers of the 'tiered' strategy (every iteration of its loop runs a chunk of
# each; one host round trip per iteration on GPUs).
TIERED_TIERS = (16, 32)
# Window cells gathered per loop iteration of the 'tiered' strategy, shared
# among the tiers in these proportions (None: any larger side), roughly the
# cells that the RoIs of each tier need (RoIs per chunk = share / side**2):
# balanced chunk counts keep the single loop's trip count low.
DEFAULT_CELLS_PER_STEP = 2 ** 19
TIER_SHARES = {8: 1, 16: 1, 32: 6, None: 3}
STRATEGIES = ('chunked', 'tiered', 'dense')


def map_roi_levels(boxes, num_levels: int, finest_scale: float = 56.):
  """(..., 4) XYXY boxes -> (...,) int32 pyramid level in [0, num_levels)."""
  scale = jnp.sqrt((boxes[..., 2] - boxes[..., 0]) *
                   (boxes[..., 3] - boxes[..., 1]))
  lvl = jnp.floor(jnp.log2(scale / finest_scale + 1e-6))
  lvl = jnp.where(jnp.isnan(lvl), 0, lvl)
  return jnp.clip(lvl, 0, num_levels - 1).astype(jnp.int32)


def _next_pow2(x):
  """Elementwise smallest power of two >= x (x >= 1), int32."""
  x = jnp.maximum(x, 1)
  return (2 ** jnp.ceil(jnp.log2(x.astype(jnp.float32)))).astype(jnp.int32)


def _axis_geometry(lo, hi, scale, out_size, size):
  """Sampling geometry of one axis (mmcv roi_align, aligned=True).

  Args:
    lo, hi: (R,) box edges in image pixels.
    scale: (R,) spatial scale 1 / stride.
    out_size: number of output bins.
    size: (R,) int valid feature-map length on this axis.

  Returns:
    start (R,), bin size (R,), grid (R,) int samples per bin, window origin
    (R,) int and the number of cells the window needs (R,) int.
  """
  start = lo * scale - 0.5
  end = hi * scale - 0.5
  length = end - start
  bin_size = length / out_size
  grid = jnp.ceil(length / out_size).astype(jnp.int32)
  last = size - 1
  origin = jnp.clip(jnp.floor(start).astype(jnp.int32), 0, last)
  stop = jnp.clip(jnp.floor(end).astype(jnp.int32) + 1, 0, last)
  need = jnp.maximum(stop - origin + 1, 1)
  return start, bin_size, grid, origin, need


def _axis_weights(start, bin_size, grid, origin, size, out_size: int,
                  max_grid: int, length: int):
  """Per-axis interpolation weights A[r, p, j] on the window cells.

  A[r, p, j] = (1 / grid) * sum over the bin's samples of the bilinear
  weight of cell origin + j, with mmcv's border rules: samples outside
  [-1, size] contribute nothing, coordinates are clamped to >= 0, and a
  sample at or past the last cell puts all its weight there.

  Returns:
    (R, out_size, length) float32.
  """
  r = start.shape[0]
  p = jnp.arange(out_size, dtype=jnp.float32)[None, :, None]
  i = jnp.arange(max_grid, dtype=jnp.int32)[None, None, :]
  grid_f = grid.astype(jnp.float32)[:, None, None]
  bin_size = bin_size[:, None, None]
  # Same float32 evaluation order as mmcv's CPU kernel.
  y = (start[:, None, None] + p * bin_size) + (
      (i.astype(jnp.float32) + 0.5) * bin_size) / grid_f
  size_f = size.astype(jnp.float32)[:, None, None]
  size_i = size[:, None, None]
  in_grid = i < grid[:, None, None]
  valid = in_grid & (y >= -1.0) & (y <= size_f)
  y = jnp.maximum(y, 0.0)
  low = jnp.floor(y).astype(jnp.int32)
  at_end = low >= size_i - 1
  low = jnp.where(at_end, size_i - 1, low)
  high = jnp.where(at_end, size_i - 1, low + 1)
  y = jnp.where(at_end, low.astype(jnp.float32), y)
  frac = y - low.astype(jnp.float32)
  w_low = jnp.where(valid, 1.0 - frac, 0.0)
  w_high = jnp.where(valid, frac, 0.0)
  inv = 1.0 / jnp.maximum(grid_f, 1.0)
  w_low, w_high = w_low * inv, w_high * inv
  origin = origin[:, None, None]
  rows = jnp.broadcast_to(jnp.arange(r)[:, None, None], low.shape)
  bins = jnp.broadcast_to(jnp.arange(out_size)[None, :, None], low.shape)
  weights = jnp.zeros((r, out_size, length), jnp.float32)
  weights = weights.at[rows, bins, low - origin].add(w_low, mode='drop')
  weights = weights.at[rows, bins, high - origin].add(w_high, mode='drop')
  return weights


def _tier_fits(need_y, need_x, side: int):
  """Whether a window of need_y x need_x cells fits an s*s tier buffer."""
  minor = _next_pow2(jnp.minimum(need_y, need_x))
  major = jnp.maximum(need_y, need_x)
  return (minor <= side) & (minor * major <= side * side)


def _chunk_index(geom, side: int):
  """Rows of the flattened maps gathered into each RoI's s*s window.

  Returns:
    index (R, s*s) int32, tall (R,) bool (rows are the major axis) and
    minor_len (R,) int32.
  """
  n_cells = side * side
  tall = geom['need_y'] >= geom['need_x']
  minor_len = _next_pow2(jnp.minimum(geom['need_y'], geom['need_x']))
  minor_len = jnp.minimum(minor_len, side)
  k = jnp.arange(n_cells, dtype=jnp.int32)[None, :]
  m = minor_len[:, None]
  major_idx = k // m
  minor_idx = k % m
  dy = jnp.where(tall[:, None], major_idx, minor_idx)
  dx = jnp.where(tall[:, None], minor_idx, major_idx)
  rows = jnp.minimum(geom['y0'][:, None] + dy, geom['map_h'][:, None] - 1)
  cols = jnp.minimum(geom['x0'][:, None] + dx, geom['map_w'][:, None] - 1)
  index = geom['base'][:, None] + rows * geom['map_w'][:, None] + cols
  return index, tall, minor_len


def _chunk_weights(geom, tall, minor_len, side: int, out_size: int,
                   max_grid: int):
  """Interpolation weights on the window: (R, P, s, s) major, (R, P, s)."""
  n_cells = side * side
  wy = _axis_weights(geom['start_y'], geom['bin_y'], geom['grid_y'],
                     geom['y0'], geom['size_y'], out_size, max_grid, n_cells)
  wx = _axis_weights(geom['start_x'], geom['bin_x'], geom['grid_x'],
                     geom['x0'], geom['size_x'], out_size, max_grid, n_cells)
  w_major = jnp.where(tall[:, None, None], wy, wx)  # (R, P, s*s)
  w_minor = jnp.where(tall[:, None, None], wx, wy)[..., :side]  # (R, P, s)
  a = jnp.arange(side)[:, None]
  b = jnp.arange(side)[None, :]
  m3 = minor_len[:, None, None]
  major_of_ab = a[None] * (side // m3) + b[None] // m3  # (R, s, s)
  minor_of_b = jnp.arange(side)[None, :] % minor_len[:, None]  # (R, s)
  w_major_ab = jnp.take_along_axis(
      w_major, major_of_ab.reshape(-1, 1, n_cells), axis=2).reshape(
          -1, out_size, side, side)
  w_minor_b = jnp.take_along_axis(w_minor, minor_of_b[:, None, :], axis=2)
  return w_major_ab, w_minor_b


def _contract(window, w_major_ab, w_minor_b, tall, precision):
  """(R, s, s, C) window -> (R, P, P, C), rows first."""
  dtype = window.dtype
  partial = jnp.einsum('rpab,rabc->rpbc', w_major_ab.astype(dtype), window,
                       precision=precision)
  out = jnp.einsum('rpbc,rqb->rpqc', partial, w_minor_b.astype(dtype),
                   precision=precision)
  # out is (major bin, minor bin); put rows first for wide RoIs.
  return jnp.where(tall[:, None, None, None], out,
                   jnp.swapaxes(out, 1, 2))


def _align_chunk(flat_features, geom, side: int, out_size: int,
                 max_grid: int, precision):
  """RoIAlign of one chunk of RoIs with an s*s window buffer.

  Args:
    flat_features: (B * T, C) all levels of all images, flattened.
    geom: dict of (R,) per-RoI arrays (see `multilevel_roi_align`).
    side: s, the tier's buffer side.

  Returns:
    (R, out_size, out_size, C).
  """
  index, tall, minor_len = _chunk_index(geom, side)
  window = jnp.take(flat_features, index, axis=0)  # (R, s*s, C)
  window = window.reshape(-1, side, side, window.shape[-1])
  w_major_ab, w_minor_b = _chunk_weights(geom, tall, minor_len, side,
                                         out_size, max_grid)
  return _contract(window, w_major_ab, w_minor_b, tall, precision)


def _num_steps(tiers, counts):
  """Loop trip count: the most chunks any tier needs."""
  return functools.reduce(jnp.maximum, [
      (counts[t] + chunk - 1) // chunk for t, (_, chunk, _) in
      enumerate(tiers)])


def _tier_rows(t, chunk, i, starts, counts, rows):
  """Start row of tier t's i-th chunk (clamped in range) and its own rows."""
  first = jnp.minimum(starts[t] + i * chunk, rows - chunk)
  mine = first + jnp.arange(chunk) < starts[t] + counts[t]
  mine &= first + jnp.arange(chunk) >= starts[t] + i * chunk
  return first, mine


def _tiered_forward(cfg, flat, sorted_geom, counts, starts):
  """One while loop; each iteration advances every tier by one chunk.

  `sorted_geom` holds the RoIs sorted by tier (ascending) and padded with
  at least one chunk of rows. Iteration i computes chunk i of every tier
  (a tier with fewer chunks recomputes rows it does not own) and writes
  only the rows that belong to that tier, so the trip count is the
  largest number of chunks a tier really needs and no conditional runs.

  Returns:
    (R + pad, P, P, C) in `flat`'s dtype, in sorted order.
  """
  tiers, out_size, precision, _, channels, _ = cfg
  rows = sorted_geom['base'].shape[0]
  out = jnp.zeros((rows, out_size, out_size, channels), flat.dtype)
  steps = _num_steps(tiers, counts)

  def body(state):
    i, out = state
    for t, (side, chunk, max_grid) in enumerate(tiers):
      first, mine = _tier_rows(t, chunk, i, starts, counts, rows)
      g = jax.tree_util.tree_map(
          lambda x: jax.lax.dynamic_slice_in_dim(x, first, chunk),
          sorted_geom)
      res = _align_chunk(flat, g, side, out_size, max_grid, precision)
      old = jax.lax.dynamic_slice_in_dim(out, first, chunk)
      res = jnp.where(mine[:, None, None, None], res.astype(out.dtype), old)
      out = jax.lax.dynamic_update_slice_in_dim(out, res, first, axis=0)
    return i + 1, out

  _, out = jax.lax.while_loop(lambda s: s[0] < steps, body,
                              (jnp.int32(0), out))
  return out


def _tiered_backward(cfg, sorted_geom, counts, starts, grad_out):
  """Transpose of `_tiered_forward`: one (B * T, C) gradient buffer.

  Same loop; every chunk's window gradient (rows it does not own masked
  to zero) is scatter-added straight into the single buffer it carries.
  """
  tiers, out_size, precision, flat_rows, channels, dtype = cfg
  rows = sorted_geom['base'].shape[0]
  grad = buffers.zeros_after(grad_out, (flat_rows, channels), dtype)
  steps = _num_steps(tiers, counts)

  def body(state):
    i, grad = state
    for t, (side, chunk, max_grid) in enumerate(tiers):
      first, mine = _tier_rows(t, chunk, i, starts, counts, rows)
      g = jax.tree_util.tree_map(
          lambda x: jax.lax.dynamic_slice_in_dim(x, first, chunk),
          sorted_geom)
      cot = jax.lax.dynamic_slice_in_dim(grad_out, first, chunk)
      cot = jnp.where(mine[:, None, None, None], cot, 0).astype(dtype)
      index, tall, minor_len = _chunk_index(g, side)
      w_major_ab, w_minor_b = _chunk_weights(g, tall, minor_len, side,
                                             out_size, max_grid)
      zero_window = jnp.zeros((chunk, side, side, channels), dtype)
      _, vjp = jax.vjp(
          lambda w: _contract(w, w_major_ab, w_minor_b, tall, precision),
          zero_window)
      (g_window,) = vjp(cot)
      grad = grad.at[index.reshape(-1)].add(
          g_window.reshape(-1, channels), mode='drop')
    return i + 1, grad

  _, grad = jax.lax.while_loop(lambda s: s[0] < steps, body,
                               (jnp.int32(0), grad))
  return grad


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _tiered_align(cfg, flat, sorted_geom, counts, starts):
  return _tiered_forward(cfg, flat, sorted_geom, counts, starts)


def _tiered_align_fwd(cfg, flat, sorted_geom, counts, starts):
  out = _tiered_forward(cfg, flat, sorted_geom, counts, starts)
  return out, (sorted_geom, counts, starts)


def _tiered_align_bwd(cfg, residuals, grad_out):
  sorted_geom, counts, starts = residuals
  grad = _tiered_backward(cfg, sorted_geom, counts, starts, grad_out)
  # RoIAlign is linear in the features; like mmcv, no gradient for boxes.
  zeros = jax.tree_util.tree_map(
      lambda x: np.zeros(x.shape, jax.dtypes.float0)
      if not jnp.issubdtype(x.dtype, jnp.floating) else jnp.zeros_like(x),
      (sorted_geom, counts, starts))
  return (grad,) + zeros


_tiered_align.defvjp(_tiered_align_fwd, _tiered_align_bwd)


def required_top_tier(canvas_maps: Sequence[Sequence[int]],
                      strides: Sequence[int], finest_scale: float) -> int:
  """Smallest power-of-two side whose s*s buffer covers any RoI window.

  A window of `a` cells needs a RoI longer than a - 3 cells on that axis.
  RoIs on level l < L-1 have sqrt(area) < finest_scale * 2**(l+1) pixels
  (the level rule), which bounds the major axis given the minor one; the top
  level is bounded by its map only. The bound is conservative.
  """
  need = 1
  for lvl, ((h, w), stride) in enumerate(zip(canvas_maps, strides)):
    longest = max(h, w)
    bounded = lvl < len(strides) - 1
    max_area = (finest_scale * 2 ** (lvl + 1) / stride) ** 2
    for minor in range(1, longest + 1):
      major = longest
      if bounded and minor > 3:
        major = min(major, math.floor(max_area / (minor - 3)) + 3)
      if major < minor:
        continue
      need = max(need, (1 << (minor - 1).bit_length()) * major)
  side = 1
  while side * side < need:
    side *= 2
  return side


class FlatLevels(NamedTuple):
  """FPN levels flattened for RoIAlign (`flatten_levels`).

  flat: (B * T, C) rows, image-major, then level, then y, then x, with
  T = sum_l H_l * W_l; maps: ((H_l, W_l), ...) per level.
  """
  flat: jax.Array
  maps: Tuple[Tuple[int, int], ...]


def flatten_levels(features: Sequence[jax.Array]) -> FlatLevels:
  """L arrays (B, H_l, W_l, C) -> FlatLevels. Flattening once and passing
  the result to every `multilevel_roi_align` of a step (box and mask heads)
  lets autodiff sum their feature gradients into one buffer."""
  bsz, channels = features[0].shape[0], features[0].shape[-1]
  flat = jnp.concatenate(
      [f.reshape(bsz, -1, channels) for f in features], axis=1)
  return FlatLevels(flat.reshape(-1, channels),
                    tuple(tuple(f.shape[1:3]) for f in features))


def multilevel_roi_align(features: Sequence[jax.Array], boxes, batch_index,
                         valid_hw, *, output_size: int,
                         strides: Sequence[int], finest_scale: float = 56.,
                         chunk_size: int = 128,
                         tiers: Sequence[int] = None,
                         precision=jax.lax.Precision.HIGHEST,
                         strategy: str = 'chunked',
                         cells_per_step: int = DEFAULT_CELLS_PER_STEP,
                         rois_per_image: int = None):
  """mmcv RoIAlign(aligned=True, sampling_ratio=0, 'avg') over FPN levels.

  Args:
    features: L arrays (B, H_l, W_l, C), NHWC, on the padded canvas, or
      their `flatten_levels`.
    boxes: (R, 4) XYXY RoIs in input-image pixels; padding RoIs may be
      zero boxes (their output is then meaningless but finite).
    batch_index: (R,) int32 image of each RoI.
    valid_hw: (B, L, 2) int32 valid size of every level map per image
      (ceil(pad_shape / stride)); the map past it is treated as absent,
      exactly as if the image had been padded only to pad_shape.
    output_size: P, output bins per axis (7 box head, 14 mask head).
    strides: L feature strides.
    finest_scale: level rule scale (56).
    chunk_size: RoIs per chunk ('chunked').
    tiers: window buffer sides tried in order; the required top tier is
      appended if the canvas needs a larger one (default DEFAULT_TIERS for
      'chunked', TIERED_TIERS for 'tiered').
    precision: einsum precision (HIGHEST for float32 parity on GPUs/TPUs).
    strategy: 'chunked' (CPU): a lax.map over chunks of `chunk_size` RoIs
      sorted by window size, each chunk choosing its tier with lax.switch.
      'tiered' (accelerators): RoIs sorted by tier, then one while loop
      whose every iteration computes one chunk of each tier (chunk sizes
      share `cells_per_step` by TIER_SHARES); its trip count is the most
      chunks a tier really needs (no conditionals); a custom VJP runs the
      same loop, accumulating every chunk's gradient into one
      feature-gradient buffer, and saves no activations. Both strategies
      compute exactly the same values.
      'dense' (small canvases): per level, each image's RoIs contract the
      whole map with (P, H_l) and (P, W_l) weights, two batched matmuls,
      no loop and no gather; needs `rois_per_image`.
    cells_per_step: 'tiered' window cells per loop iteration (memory bound:
      cells_per_step * C values gathered at a time).
    rois_per_image: n when the RoIs are image-major in equal groups (RoI r
      belongs to image r // n, as `batch_index` then says); 'dense' only.

  Returns:
    (R, P, P, C) pooled features, in `features`' dtype.
  """
  if not isinstance(features, FlatLevels):
    features = flatten_levels(features)
  flat, maps = features
  num_levels = len(maps)
  channels = flat.shape[-1]
  dtype = flat.dtype
  sizes = [h * w for h, w in maps]
  offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
  total = int(sum(sizes))

  top = required_top_tier(maps, strides, finest_scale)

  boxes = boxes.astype(jnp.float32)
  batch_index = batch_index.astype(jnp.int32)
  lvl = map_roi_levels(boxes, num_levels, finest_scale)
  scale = jnp.asarray([1.0 / s for s in strides], jnp.float32)[lvl]
  valid = jnp.asarray(valid_hw, jnp.int32)[batch_index, lvl]  # (R, 2)
  start_y, bin_y, grid_y, y0, need_y = _axis_geometry(
      boxes[:, 1], boxes[:, 3], scale, output_size, valid[:, 0])
  start_x, bin_x, grid_x, x0, need_x = _axis_geometry(
      boxes[:, 0], boxes[:, 2], scale, output_size, valid[:, 1])
  geom = dict(
      start_y=start_y, bin_y=bin_y, grid_y=grid_y, y0=y0, need_y=need_y,
      size_y=valid[:, 0],
      start_x=start_x, bin_x=bin_x, grid_x=grid_x, x0=x0, need_x=need_x,
      size_x=valid[:, 1],
      map_h=jnp.asarray([h for h, _ in maps], jnp.int32)[lvl],
      map_w=jnp.asarray([w for _, w in maps], jnp.int32)[lvl],
      base=batch_index * total + jnp.asarray(offsets)[lvl],
  )
  if strategy not in STRATEGIES:
    raise ValueError(f'roi_align strategy must be one of {STRATEGIES}, '
                     f'got {strategy!r}')
  max_map = max(max(h, w) for h, w in maps)
  if strategy == 'dense':
    if not rois_per_image or boxes.shape[0] % rois_per_image:
      raise ValueError("roi_align strategy 'dense' needs the RoIs grouped "
                       'by image (rois_per_image), got rois_per_image='
                       f'{rois_per_image} for {boxes.shape[0]} RoIs')
    return _dense(flat, maps, offsets, geom, lvl, rois_per_image,
                  output_size, precision,
                  (max_map + 3) // output_size + 2).astype(dtype)
  if tiers is None:
    tiers = DEFAULT_TIERS if strategy == 'chunked' else TIERED_TIERS
  tier_sides = sorted(set(t for t in tiers if t < top) | {top})
  # Smallest tier per RoI.
  tier_of = jnp.full(boxes.shape[:1], len(tier_sides) - 1, jnp.int32)
  for t in reversed(range(len(tier_sides) - 1)):
    tier_of = jnp.where(_tier_fits(need_y, need_x, tier_sides[t]), t,
                        tier_of)
  num = boxes.shape[0]

  def max_grid_of(side):
    # Samples per bin can not exceed the window's major length / bins + 1.
    return min(side * side, max_map + 3) // output_size + 2

  if strategy == 'tiered':
    return _tiered(flat, geom, tier_of, tier_sides, num, channels, dtype,
                   output_size, precision, cells_per_step, max_grid_of)

  # Group RoIs of similar need into chunks.
  padded = -(-num // chunk_size) * chunk_size
  order = jnp.argsort(tier_of, stable=True)
  pad = padded - num

  def prepare(x):
    x = x[order]
    if pad:
      x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)], axis=0)
    return x.reshape((padded // chunk_size, chunk_size) + x.shape[1:])

  chunks = jax.tree_util.tree_map(prepare, geom)
  chunk_tier = prepare(tier_of).max(axis=1)

  branches = []
  for side in tier_sides:
    branches.append(functools.partial(
        _align_chunk, flat, side=side, out_size=output_size,
        max_grid=max_grid_of(side), precision=precision))

  def one_chunk(args):
    tier, g = args
    return jax.lax.switch(tier, branches, g)

  pooled = jax.lax.map(one_chunk, (chunk_tier, chunks))
  pooled = pooled.reshape((padded, output_size, output_size, channels))[:num]
  inverse = jnp.argsort(order)
  return pooled[inverse].astype(dtype)


def _tiered(flat, geom, tier_of, tier_sides, num, channels, dtype,
            output_size, precision, cells_per_step, max_grid_of):
  """The 'tiered' strategy of `multilevel_roi_align`."""
  if num == 0:
    return jnp.zeros((0, output_size, output_size, channels), dtype)
  weights = [TIER_SHARES.get(side, TIER_SHARES[None]) for side in tier_sides]
  plan = tuple(
      (side, int(min(max(cells_per_step * w // sum(weights) // side ** 2, 1),
                     num)), max_grid_of(side))
      for side, w in zip(tier_sides, weights))
  pad = max(c for _, c, _ in plan)
  order = jnp.argsort(tier_of, stable=True)
  counts = jnp.sum(tier_of[:, None] == jnp.arange(len(tier_sides))[None],
                   axis=0).astype(jnp.int32)
  starts = (jnp.cumsum(counts) - counts).astype(jnp.int32)

  def prepare(x):
    x = jax.lax.stop_gradient(x[order])
    return jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)], axis=0)

  sorted_geom = jax.tree_util.tree_map(prepare, geom)
  cfg = (plan, output_size, precision, flat.shape[0], channels,
         jnp.dtype(flat.dtype).name)
  pooled = _tiered_align(cfg, flat, sorted_geom, counts, starts)[:num]
  inverse = jnp.argsort(order)
  return pooled[inverse].astype(dtype)


def _dense(flat, maps, offsets, geom, lvl, rois_per_image: int,
           output_size: int, precision, max_grid: int):
  """The 'dense' strategy of `multilevel_roi_align`: (R, P, P, C).

  The weights of `_axis_weights` with the window origin at cell 0 and the
  window as long as the longest map; a RoI's weights on a level other than
  its own are zero, so summing the levels' results gives its own level's.
  """
  n = rois_per_image
  num, channels = geom['start_y'].shape[0], flat.shape[-1]
  if num == 0:
    return jnp.zeros((0, output_size, output_size, channels), flat.dtype)
  bsz = num // n
  total = sum(h * w for h, w in maps)
  images = flat.reshape(-1, total, channels)  # (B, T, C)
  if images.shape[0] != bsz:
    raise ValueError(f"roi_align 'dense': {num} RoIs in groups of {n} are "
                     f'{bsz} images, the maps hold {images.shape[0]}')
  height = max(h for h, _ in maps)
  width = max(w for _, w in maps)
  zero = jnp.zeros_like(geom['y0'])
  wy = _axis_weights(geom['start_y'], geom['bin_y'], geom['grid_y'], zero,
                     geom['size_y'], output_size, max_grid, height)
  wx = _axis_weights(geom['start_x'], geom['bin_x'], geom['grid_x'], zero,
                     geom['size_x'], output_size, max_grid, width)
  wy = jax.lax.stop_gradient(wy).astype(flat.dtype)
  wx = jax.lax.stop_gradient(wx).astype(flat.dtype)
  out = None
  for level, ((h, w), offset) in enumerate(zip(maps, offsets)):
    fmap = images[:, offset:offset + h * w].reshape(bsz, h, w, channels)
    mine = (lvl == level)[:, None, None]
    ay = jnp.where(mine, wy[:, :, :h], 0).reshape(bsz, n, output_size, h)
    ax = wx[:, :, :w].reshape(bsz, n, output_size, w)
    pooled = _dense_level(precision, ay, ax, fmap)
    out = pooled if out is None else out + pooled
  return out.reshape(num, output_size, output_size, channels)


def _dense_level_forward(precision, ay, ax, fmap):
  """(B, n, P, H), (B, n, Q, W), (B, H, W, C) -> (B, n, P, Q, C).

  Both contractions in dot_general's canonical layouts (batch, free,
  contracted), so nothing is copied: rows (B, n*P, W*C) straight from the
  map, then one (Q, W) x (W, C) product per (image, RoI, row bin) with Ax
  broadcast over the row bins (P*Q*W values per RoI).
  """
  p, q = ay.shape[2], ax.shape[2]
  rows = jnp.einsum('bnpy,byxc->bnpxc', ay, fmap, precision=precision)
  ax = jnp.broadcast_to(ax[:, :, None], ax.shape[:2] + (p, q, ax.shape[3]))
  return jnp.einsum('bnpqx,bnpxc->bnpqc', ax, rows, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _dense_level(precision, ay, ax, fmap):
  """`_dense_level_forward` with a map-only gradient whose two products are
  canonical too (the weights are constants of the geometry): autodiff's
  own backward made XLA:CPU transpose `rows` and its gradient (~60 ms of
  the quick start's ~800 ms step)."""
  return _dense_level_forward(precision, ay, ax, fmap)


def _dense_level_fwd(precision, ay, ax, fmap):
  return _dense_level_forward(precision, ay, ax, fmap), (ay, ax)


def _dense_level_bwd(precision, residuals, g):
  ay, ax = residuals
  b, n, p, h = ay.shape
  q, w, c = ax.shape[2], ax.shape[3], g.shape[-1]
  # d rows (B, n, P, W, C): per (image, RoI, row bin) Ax^T (W, Q) x g (Q, C).
  ax_t = jnp.broadcast_to(jnp.swapaxes(ax, 2, 3)[:, :, None], (b, n, p, w, q))
  d_rows = jnp.einsum('bnpxq,bnpqc->bnpxc', ax_t, g, precision=precision)
  # d map (B, H, W*C): per image Ay^T (H, n*P) x d rows (n*P, W*C).
  ay_t = jnp.transpose(ay.reshape(b, n * p, h), (0, 2, 1))
  d_map = jnp.einsum('byk,bkx->byx', ay_t, d_rows.reshape(b, n * p, w * c),
                     precision=precision)
  return (jnp.zeros_like(ay), jnp.zeros_like(ax),
          d_map.reshape(b, h, w, c).astype(g.dtype))


_dense_level.defvjp(_dense_level_fwd, _dense_level_bwd)
