"""Exact greedy non-maximum suppression with static shapes.

Reproduces the CPU semantics of mmcv 2.x `mmcv.ops.nms` / `batched_nms`
(as called by MMDetection 3.3.0) bit for bit, but with static shapes so that
everything can be jitted and vmapped:

  * Boxes are XYXY float32 in absolute pixels.
  * `area = (x2 - x1) * (y2 - y1)` (mmcv `offset=0`, no `+1`).
  * `IoU = inter / (area_i + area_j - inter)` in float32, evaluated in exactly
    this order (`(area_i + area_j) - inter`). A zero-area pair gives
    `0 / 0 = NaN`, which never suppresses (as in mmcv).
  * Boxes are visited in descending score order; box `j` is suppressed by an
    earlier *kept* box `i` iff `IoU(i, j) > iou_threshold` (strict), with the
    threshold rounded to float32 (mmcv passes it as a C++ `float`).
  * `batched_nms` (class-aware) shifts every box by
    `idxs * (boxes.max() + 1)` in float32 before the IoU, exactly like mmcv,
    so the (tiny) perturbation this causes to the IoUs is reproduced too.

Invalid entries (`valid == False`) play the role of boxes that are absent from
the mmcv call: they are never kept, never suppress anything and do not enter
`boxes.max()`.

Floating point exactness note: XLA lets LLVM contract a multiply followed by
an add into a fused multiply-add (FMA), which rounds once instead of twice and
would change some IoUs by one ulp compared with mmcv (observed on XLA:CPU for
`area_i + area_j`). XLA removes `optimization_barrier`s on CPU and fuses
across them, so the products that feed an addition (the areas and the
intersection) are passed through `_opaque`, an integer no-op the compiler
cannot see through, and the group offsets are formed from exact partial
products (see `group_offsets`).
"""

from typing import Optional, Tuple, Union

import jax
from jax import lax
import jax.numpy as jnp

from maskrcnn_jax.ops import boxes as box_ops

ArrayLike = Union[jax.Array, float]


_opaque = box_ops.opaque
_runtime_zero = box_ops.runtime_zero


def _pairwise_iou(a: Tuple[jax.Array, ...], b: Tuple[jax.Array, ...],
                  zero: jax.Array) -> jax.Array:
  """mmcv `nms_cpu` IoU between two sets of boxes.

  Args:
    a: `(x1, y1, x2, y2, area)`, each `(Ta,)` float32; `area` must already be
      `_opaque`.
    b: `(x1, y1, x2, y2, area)`, each `(Tb,)` float32, likewise.
    zero: uint32 run-time zero for `_opaque`.

  Returns:
    `(Ta, Tb)` float32 IoU matrix (NaN for pairs of zero-area boxes that do
    not overlap, exactly like mmcv's `0 / 0`).
  """
  ax1, ay1, ax2, ay2, aarea = (v[:, None] for v in a)
  bx1, by1, bx2, by2, barea = (v[None, :] for v in b)
  w = jnp.maximum(jnp.minimum(ax2, bx2) - jnp.maximum(ax1, bx1), 0.0)
  h = jnp.maximum(jnp.minimum(ay2, by2) - jnp.maximum(ay1, by1), 0.0)
  inter = _opaque(w * h, zero)
  return inter / ((aarea + barea) - inter)


def _resolve_tile(init: jax.Array, over: jax.Array) -> jax.Array:
  """Greedy suppression inside one tile, by fixed-point iteration.

  Solves `keep[j] = init[j] & ~any_i(keep[i] & over[j, i])` where `over` is
  already restricted to `i < j`. Since `keep[j]` depends only on earlier
  entries, the solution is unique and equals the sequential greedy result;
  iterating from `keep = init` fixes at least one more leading entry per
  step, so it converges in at most `T` steps (usually very few).

  Args:
    init: `(T,)` bool, tile boxes that are valid and not suppressed by kept
      boxes of earlier tiles.
    over: `(T, T)` bool, `over[j, i] = IoU(i, j) > thr and i < j`.

  Returns:
    `(T,)` bool keep mask of the tile.
  """

  def step(state):
    keep, _ = state
    new = init & ~jnp.any(over & keep[None, :], axis=1)
    return new, jnp.any(new != keep)

  keep, _ = lax.while_loop(lambda s: s[1], step, (init, jnp.array(True)))
  return keep


STRATEGIES = ('tiled', 'dense')
# Fixed-point steps per while-loop iteration of the 'dense' strategy (each
# iteration is one device-to-host predicate read on GPUs).
DENSE_STEPS = 4


def _check_nms_inputs(boxes, valid):
  """(boxes (N, 4) float32, valid (N,) bool), or ValueError naming shapes."""
  boxes = jnp.asarray(boxes, jnp.float32)
  valid = jnp.asarray(valid, bool)
  n = boxes.shape[0] if boxes.ndim else 0
  if boxes.shape != (n, 4) or valid.shape != (n,):
    raise ValueError(f'Expected boxes (N, 4) and valid (N,), got {boxes.shape} '
                     f'and {valid.shape}.')
  return boxes, valid


def nms_keep_sorted_dense(boxes: jax.Array, valid: jax.Array,
                          iou_threshold: ArrayLike,
                          steps: int = DENSE_STEPS) -> jax.Array:
  """Exact greedy NMS on sorted boxes with one (N, N) suppression matrix.

  `over[j, i] = IoU(i, j) > thr and i < j and valid[i]` is computed once
  (the same float32 IoU as `nms_keep_sorted`); the keep mask is then the
  fixed point of `keep = valid & ~any_i(over[:, i] & keep[i])`, reached
  from `keep = valid` by a `lax.while_loop` that runs `steps` updates per
  iteration. The fixed point is unique and equals sequential greedy NMS
  (`keep[j]` depends only on entries before `j`, so each update fixes at
  least one more leading entry); the loop stops at the first iteration
  whose last update changed nothing, usually after one or two. No tile
  loop and no data-dependent branch: the accelerator path.

  Args:
    boxes: `(N, 4)` float32 XYXY boxes sorted by descending score.
    valid: `(N,)` bool; invalid boxes are never kept and never suppress.
    iou_threshold: scalar, suppress iff IoU > threshold (float32, strict).
    steps: static fixed-point updates per loop iteration.

  Returns:
    `(N,)` bool keep mask.
  """
  boxes, valid = _check_nms_inputs(boxes, valid)
  n = boxes.shape[0]
  if n == 0:
    return jnp.zeros((0,), bool)
  thr = jnp.asarray(iou_threshold, jnp.float32)
  zero = _runtime_zero(boxes)
  x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
  coords = (x1, y1, x2, y2, _opaque((x2 - x1) * (y2 - y1), zero))
  earlier = jnp.arange(n)[None, :] < jnp.arange(n)[:, None]  # [j, i]: i < j.
  over = (_pairwise_iou(coords, coords, zero) > thr) & earlier & valid[None, :]

  def update(keep):
    return valid & ~jnp.any(over & keep[None, :], axis=1)

  def body(state):
    keep, _ = state
    for _ in range(steps - 1):
      keep = update(keep)
    new = update(keep)
    return new, jnp.any(new != keep)

  keep, _ = lax.while_loop(lambda s: s[1], body, (valid, jnp.array(True)))
  return keep


def nms_keep_sorted(boxes: jax.Array,
                    valid: jax.Array,
                    iou_threshold: ArrayLike,
                    tile_size: int = 256,
                    strategy: str = 'tiled') -> jax.Array:
  """Exact greedy NMS on boxes already sorted by descending score.

  Tiled algorithm with static shapes (jit- and vmap-friendly, no host
  round-trips). The boxes are cut into tiles of `T = min(tile_size, N)`
  consecutive boxes (`N` is padded internally to a multiple of `T`). A
  `lax.fori_loop` visits the tiles in order, stopping after the last tile that
  holds a valid box. For tile `t`:

    1. an inner loop over the tiles `s < t` computes `(T, T)` IoU blocks and
       suppresses every tile box that overlaps (`IoU > thr`) a box kept in an
       earlier tile (those decisions are already final);
    2. the remaining conflicts inside the tile are resolved with
       `_resolve_tile` (a `lax.while_loop` to a fixed point).

  The total work is about `(M / T)^2 / 2` IoU blocks of `T x T`, where `M` is
  the position of the last valid box, so trailing invalid padding is nearly
  free.

  Args:
    boxes: `(N, 4)` float32 XYXY boxes in absolute pixels, sorted by
      descending score (index 0 = highest score).
    valid: `(N,)` bool; invalid boxes are never kept and never suppress.
    iou_threshold: scalar; a box is suppressed iff its IoU with an earlier kept
      box is strictly greater. Rounded to float32. May be a traced value.
    tile_size: static tile length `T` (the tile is `min(tile_size, N)`).
    strategy: 'tiled' (this algorithm; CPU) or 'dense'
      (`nms_keep_sorted_dense`; accelerators). Same result.

  Returns:
    `(N,)` bool: `True` for the boxes kept by greedy NMS.
  """
  if strategy not in STRATEGIES:
    raise ValueError(f'nms strategy must be one of {STRATEGIES}, got '
                     f'{strategy!r}')
  if strategy == 'dense':
    return nms_keep_sorted_dense(boxes, valid, iou_threshold)
  boxes, valid = _check_nms_inputs(boxes, valid)
  n = boxes.shape[0]
  if n == 0:
    return jnp.zeros((0,), bool)
  if tile_size < 1:
    raise ValueError(f'tile_size must be positive, got {tile_size}.')
  t = min(tile_size, n)
  num_tiles = -(-n // t)
  pad = num_tiles * t - n
  thr = jnp.asarray(iou_threshold, jnp.float32)

  boxes = jnp.pad(boxes, ((0, pad), (0, 0)))
  valid = jnp.pad(valid, (0, pad))
  x1, y1, x2, y2 = (boxes[:, k].reshape(num_tiles, t) for k in range(4))
  zero = _runtime_zero(boxes)
  area = _opaque((x2 - x1) * (y2 - y1), zero)
  coords = (x1, y1, x2, y2, area)
  valid = valid.reshape(num_tiles, t)
  # Tiles after the last valid box are skipped (dynamic trip count).
  last = jnp.max(jnp.where(valid.reshape(-1), jnp.arange(num_tiles * t), -1))
  num_active = (last + t) // t
  lower = jnp.arange(t)[None, :] < jnp.arange(t)[:, None]  # [j, i]: i < j.

  def tile_body(ti, keep):
    tile = tuple(c[ti] for c in coords)

    def earlier_body(si, suppressed):
      other = tuple(c[si] for c in coords)
      over = _pairwise_iou(tile, other, zero) > thr  # [j, i]
      return suppressed | jnp.any(over & keep[si][None, :], axis=1)

    suppressed = lax.fori_loop(0, ti, earlier_body, jnp.zeros((t,), bool))
    init = valid[ti] & ~suppressed
    over = (_pairwise_iou(tile, tile, zero) > thr) & lower
    return keep.at[ti].set(_resolve_tile(init, over))

  keep = lax.fori_loop(0, num_active, tile_body,
                       jnp.zeros((num_tiles, t), bool))
  return keep.reshape(-1)[:n]


def group_offsets(idxs: jax.Array, max_coordinate: jax.Array) -> jax.Array:
  """`float32(idxs) * (max_coordinate + 1)` rounded exactly like mmcv.

  The product is split into two partial products that are exact in float32
  (`max + 1` is split into its top and bottom 12 mantissa bits and
  `|idxs| < 4096`), and their correctly rounded sum is the correctly rounded
  product. Since both partial products are exact, an FMA contraction of any
  of the multiplies with a following addition can not change the result
  (a plain `idxs * (max + 1)` could be fused with `boxes + offsets`).

  Args:
    idxs: `(N,)` integer group ids, `|idxs| < 4096`.
    max_coordinate: float32 scalar, `boxes.max()`.

  Returns:
    `(N,)` float32 offsets.
  """
  scale = max_coordinate + jnp.float32(1)
  bits = lax.bitcast_convert_type(scale, jnp.uint32)
  hi = lax.bitcast_convert_type(bits & jnp.uint32(0xFFFFF000), jnp.float32)
  lo = scale - hi  # Exact: the low 12 mantissa bits of `scale`.
  idx = idxs.astype(jnp.float32)
  return idx * hi + idx * lo


def _sorted_nms(boxes_for_nms: jax.Array, scores: jax.Array, valid: jax.Array,
                iou_threshold: ArrayLike, max_output: int,
                tile_size: int, strategy: str = 'tiled'
               ) -> Tuple[jax.Array, jax.Array]:
  """Sorts by descending score, runs NMS and compacts the kept indices."""
  n = boxes_for_nms.shape[0]
  if n == 0:
    return (jnp.zeros((max_output,), jnp.int32),
            jnp.zeros((max_output,), bool))
  # Keys: valid first, then descending score, then ascending index (stable).
  order = jnp.arange(n, dtype=jnp.int32)
  _, _, perm = lax.sort(
      ((~valid).astype(jnp.int32), -scores.astype(jnp.float32), order),
      num_keys=3)
  keep = nms_keep_sorted(boxes_for_nms[perm], valid[perm], iou_threshold,
                         tile_size, strategy)
  (pos,) = jnp.nonzero(keep, size=max_output, fill_value=0)
  keep_valid = jnp.arange(max_output) < jnp.sum(keep)
  indices = jnp.where(keep_valid, perm[pos], 0).astype(jnp.int32)
  return indices, keep_valid


def _check_inputs(boxes, scores, valid):
  boxes = jnp.asarray(boxes, jnp.float32)
  scores = jnp.asarray(scores)
  n = boxes.shape[0]
  if boxes.shape != (n, 4) or scores.shape != (n,):
    raise ValueError(f'Expected boxes (N, 4) and scores (N,), got '
                     f'{boxes.shape} and {scores.shape}.')
  if valid is None:
    valid = jnp.ones((n,), bool)
  valid = jnp.asarray(valid, bool)
  if valid.shape != (n,):
    raise ValueError(f'Expected valid ({n},), got {valid.shape}.')
  return boxes, scores, valid


def nms(boxes: jax.Array,
        scores: jax.Array,
        valid: Optional[jax.Array],
        iou_threshold: ArrayLike,
        max_output: int,
        tile_size: int = 256,
        strategy: str = 'tiled') -> Tuple[jax.Array, jax.Array]:
  """Class-agnostic greedy NMS (mmcv `nms` on CPU, `offset=0`).

  Args:
    boxes: `(N, 4)` float32 XYXY boxes in absolute pixels.
    scores: `(N,)` float scores.
    valid: `(N,)` bool or None (all valid). Invalid entries behave as if
      absent.
    iou_threshold: scalar; suppress iff IoU > threshold (float32, strict).
    max_output: static number of output slots (mmcv `max_num`).
    tile_size: static NMS tile length, see `nms_keep_sorted`.
    strategy: 'tiled' or 'dense', see `nms_keep_sorted`.

  Returns:
    indices: `(max_output,)` int32 indices into the input of the kept boxes,
      by descending score (ties: lower input index first); padding slots
      hold 0.
    keep_valid: `(max_output,)` bool, True for the real entries (a prefix).
  """
  boxes, scores, valid = _check_inputs(boxes, scores, valid)
  return _sorted_nms(boxes, scores, valid, iou_threshold, max_output,
                     tile_size, strategy)


def batched_nms(boxes: jax.Array,
                scores: jax.Array,
                idxs: jax.Array,
                valid: Optional[jax.Array],
                iou_threshold: ArrayLike,
                max_output: int,
                tile_size: int = 256,
                strategy: str = 'tiled') -> Tuple[jax.Array, jax.Array]:
  """Class-aware greedy NMS (mmcv 2.x `batched_nms`, CPU, `offset=0`).

  Boxes of different groups never suppress each other. As in mmcv this is done
  by shifting the boxes by `offsets = float32(idxs) * (boxes.max() + 1)`
  (`boxes.max()` over all coordinates of the valid boxes only) and running a
  single NMS on the shifted boxes; the float32 rounding of the shift is
  reproduced exactly. (mmcv's `split_thr` path for >= 10000 boxes runs one NMS
  per group on the same shifted boxes; it keeps the same set, ordered by score
  with torch's tie order.)

  Args:
    boxes: `(N, 4)` float32 XYXY boxes in absolute pixels.
    scores: `(N,)` float scores.
    idxs: `(N,)` integer group ids (class or level), `0 <= idxs < 4096`.
    valid: `(N,)` bool or None (all valid). Invalid entries behave as if
      absent (they also do not enter `boxes.max()`).
    iou_threshold: scalar; suppress iff IoU > threshold (float32, strict).
    max_output: static number of output slots (mmcv `max_num`).
    tile_size: static NMS tile length, see `nms_keep_sorted`.
    strategy: 'tiled' or 'dense', see `nms_keep_sorted`.

  Returns:
    indices: `(max_output,)` int32 indices into the input of the kept boxes,
      by descending score (ties: lower input index first); padding slots
      hold 0.
    keep_valid: `(max_output,)` bool, True for the real entries (a prefix).
  """
  boxes, scores, valid = _check_inputs(boxes, scores, valid)
  idxs = jnp.asarray(idxs)
  if idxs.shape != scores.shape:
    raise ValueError(f'Expected idxs {scores.shape}, got {idxs.shape}.')
  if boxes.shape[0] == 0:
    return _sorted_nms(boxes, scores, valid, iou_threshold, max_output,
                       tile_size, strategy)
  masked = jnp.where(valid[:, None], boxes, -jnp.inf)
  max_coordinate = jnp.where(jnp.any(valid), jnp.max(masked), 0.0)
  offsets = group_offsets(idxs, max_coordinate)
  boxes_for_nms = boxes + offsets[:, None]
  return _sorted_nms(boxes_for_nms, scores, valid, iou_threshold, max_output,
                     tile_size, strategy)
