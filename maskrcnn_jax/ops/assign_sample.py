"""MMDetection's `MaxIoUAssigner` and `RandomSampler` with static shapes.

Assignment result convention (as MMDetection's `AssignResult.gt_inds`):
  -1 ignored, 0 negative, k > 0 positive matched to GT k - 1.
Sampling returns fixed-size index sets with validity masks instead of the
variable-length index lists of MMDetection; random choices use top-k over
uniform random keys, which draws uniformly without replacement like
`torch.randperm(...)[:num]`.
"""

import jax
import jax.numpy as jnp

from maskrcnn_jax.ops import boxes as box_ops


def _max_argmax(values, axis: int, also_max=None):
  """max and first argmax of values along axis (and the max of also_max,
  same shape, int32), as one variadic reduction that fuses its producers:
  no (M, N) input is materialised, on CPU either (XLA:CPU hands plain
  max-reductions to a library kernel that needs its input in memory)."""
  index = jax.lax.broadcasted_iota(jnp.int32, values.shape, axis)
  extra = (also_max,) if also_max is not None else ()

  def reducer(a, b):
    va, ia = a[:2]
    vb, ib = b[:2]
    take_b = (vb > va) | ((vb == va) & (ib < ia))
    out = (jnp.where(take_b, vb, va), jnp.where(take_b, ib, ia))
    return out + tuple(jnp.maximum(x, y) for x, y in zip(a[2:], b[2:]))

  inits = (jnp.float32(-jnp.inf), jnp.int32(values.shape[axis]))
  return jax.lax.reduce((values, index) + extra,
                        inits + (jnp.int32(-1),) * len(extra), reducer,
                        (axis,))


def max_iou_assign(gt_boxes, gt_valid, priors, prior_valid, *,
                   pos_iou_thr: float, neg_iou_thr: float,
                   min_pos_iou: float, match_low_quality: bool = True,
                   gt_max_assign_all: bool = True):
  """`MaxIoUAssigner.assign` for one image.

  The (M, N) IoU matrix (100 x 268k for the RPN at 800 x 1344) is never
  stored: it is recomputed inside each of two fused reductions, per GT over
  the priors (its best IoU, for low-quality matches) and per prior over the
  GTs (best IoU, its GT, the last low-quality match). Both evaluate the same
  expression on the same inputs, so their IoUs are bit-identical.

  Args:
    gt_boxes: (M, 4) XYXY; gt_valid: (M,) bool (padding is False).
    priors: (N, 4) XYXY anchors or proposals; prior_valid: (N,) bool
      (invalid priors are left unassigned, -1, and do not take part in the
      per-GT maxima).
    pos_iou_thr, neg_iou_thr, min_pos_iou, match_low_quality,
    gt_max_assign_all: as MMDetection.

  Returns:
    gt_inds (N,) int32 (-1 ignore / 0 negative / k+1 positive of GT k) and
    max_overlaps (N,) float32.
  """
  m, n = gt_boxes.shape[0], priors.shape[0]

  def ious_of(boxes):
    # Padding GTs overlap nothing (IoU 0): with no GT every prior is
    # negative, as MMDetection assigns when num_gts == 0.
    return jnp.where(gt_valid[:, None], box_ops.pairwise_iou(boxes, priors),
                     0.0)

  hit_index = jnp.full((m, n), -1, jnp.int32)
  if match_low_quality:
    gt_max, gt_argmax = _max_argmax(
        jnp.where(prior_valid[None, :], ious_of(gt_boxes), -jnp.inf), axis=1)
    eligible = gt_valid & (gt_max >= min_pos_iou)  # (M,)
  # A copy XLA can not merge with the first IoU expression, so that each
  # reduction fuses its own (the matrix is then never materialised).
  ious = ious_of(jax.lax.optimization_barrier(gt_boxes))
  if match_low_quality:
    if gt_max_assign_all:
      hits = eligible[:, None] & (ious == gt_max[:, None])  # (M, N)
    else:
      hits = eligible[:, None] & (jnp.arange(n)[None, :] ==
                                  gt_argmax[:, None])
    # GTs are visited in order, so the last matching GT wins.
    hit_index = jnp.where(hits, jnp.arange(m, dtype=jnp.int32)[:, None], -1)
  max_overlaps, argmax, last = _max_argmax(ious, 0, also_max=hit_index)
  gt_inds = jnp.where((max_overlaps >= 0) & (max_overlaps < neg_iou_thr), 0,
                      -1)
  gt_inds = jnp.where(max_overlaps >= pos_iou_thr, argmax + 1, gt_inds)
  gt_inds = jnp.where(last >= 0, last + 1, gt_inds)
  gt_inds = jnp.where(prior_valid, gt_inds, -1)
  return gt_inds.astype(jnp.int32), max_overlaps


def _random_top(mask, keys, k: int):
  """k indices drawn uniformly among True entries (valid flags for each)."""
  scores = jnp.where(mask, keys, -1.0)
  top, idx = jax.lax.top_k(scores, k)
  return idx.astype(jnp.int32), top >= 0


def sample_mask(gt_inds, rng, num: int, pos_fraction: float):
  """`RandomSampler` (no GT proposals) as per-prior weights.

  Args:
    gt_inds: (N,) assignment; rng: PRNG key; num: samples per image (None
      or <= 0 takes every positive and negative); pos_fraction: as MMDet.

  Returns:
    pos (N,) bool, neg (N,) bool: the sampled positives and negatives.
  """
  pos_all = gt_inds > 0
  neg_all = gt_inds == 0
  if not num or num <= 0:
    return pos_all, neg_all
  n = gt_inds.shape[0]
  keys = jax.random.uniform(rng, (n,))
  num_pos = int(num * pos_fraction)
  pos_idx, pos_ok = _random_top(pos_all, keys, min(num_pos, n))
  num_sampled_pos = pos_ok.sum()
  neg_idx, neg_ok = _random_top(neg_all, keys, min(num, n))
  neg_ok &= jnp.arange(neg_idx.shape[0]) < num - num_sampled_pos
  pos = jnp.zeros(n, bool).at[pos_idx].max(pos_ok)
  neg = jnp.zeros(n, bool).at[neg_idx].max(neg_ok)
  return pos, neg


def sample_indices(gt_inds, rng, num: int, pos_fraction: float,
                   num_slots: int):
  """`RandomSampler` as an ordered index list: positives, then negatives.

  Args:
    gt_inds: (N,) assignment of the candidates.
    rng: PRNG key; num: sample size (<= 0: all candidates).
    pos_fraction: fraction of positives.
    num_slots: static output length (>= num, or N when num <= 0).

  Returns:
    indices (num_slots,) int32 into the candidates, valid (num_slots,) bool,
    is_pos (num_slots,) bool. Valid slots come first.
  """
  n = gt_inds.shape[0]
  pos_all = gt_inds > 0
  neg_all = gt_inds == 0
  if not num or num <= 0:
    max_pos, max_neg = n, n
    keys = -jnp.arange(n, dtype=jnp.float32) / n  # keep candidate order
  else:
    max_pos = min(int(num * pos_fraction), n)
    max_neg = min(num, n)
    keys = jax.random.uniform(rng, (n,))
  pos_idx, pos_ok = _random_top(pos_all, keys + 1.0, max_pos)
  neg_idx, neg_ok = _random_top(neg_all, keys + 1.0, max_neg)
  num_pos = pos_ok.sum()
  num_neg = neg_ok.sum()
  if num and num > 0:
    num_neg = jnp.minimum(num_neg, num - num_pos)
  slot = jnp.arange(num_slots)
  from_pos = slot < num_pos
  neg_slot = jnp.clip(slot - num_pos, 0, max_neg - 1)
  pos_slot = jnp.clip(slot, 0, max_pos - 1)
  indices = jnp.where(from_pos, pos_idx[pos_slot], neg_idx[neg_slot])
  valid = from_pos | ((slot - num_pos) < num_neg)
  return indices, valid, from_pos & valid
