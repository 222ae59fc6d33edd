"""MaxIoUAssigner against a line-by-line numpy port of MMDetection's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax.ops import assign_sample


def _iou(a, b, eps=1e-6):
  area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
  area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  wh = np.clip(rb - lt, 0, None)
  overlap = wh[..., 0] * wh[..., 1]
  union = np.maximum(area_a[:, None] + area_b[None] - overlap, eps)
  return (overlap / union).astype(np.float32)


def _mmdet_assign(gt, priors, pos_thr, neg_thr, min_pos, assign_all):
  """mmdet MaxIoUAssigner.assign_wrt_overlaps (numpy, valid inputs only)."""
  n = priors.shape[0]
  if gt.shape[0] == 0:
    return np.zeros(n, np.int64), np.zeros(n, np.float32)
  overlaps = _iou(gt.astype(np.float32), priors.astype(np.float32))
  assigned = np.full(n, -1, np.int64)
  max_overlaps = overlaps.max(0)
  argmax = overlaps.argmax(0)
  gt_max = overlaps.max(1)
  gt_argmax = overlaps.argmax(1)
  assigned[(max_overlaps >= 0) & (max_overlaps < neg_thr)] = 0
  pos = max_overlaps >= pos_thr
  assigned[pos] = argmax[pos] + 1
  for i in range(gt.shape[0]):
    if gt_max[i] >= min_pos:
      if assign_all:
        assigned[overlaps[i, :] == gt_max[i]] = i + 1
      else:
        assigned[gt_argmax[i]] = i + 1
  return assigned, max_overlaps


def _boxes(rng, k, size=100.0, grid=None):
  xy = rng.uniform(0, size, (k, 2))
  wh = rng.uniform(1, size / 2, (k, 2))
  b = np.concatenate([xy, xy + wh], 1)
  return np.round(b / grid) * grid if grid else b


@pytest.mark.parametrize('assign_all', [True, False])
@pytest.mark.parametrize('seed', range(4))
def test_max_iou_assign_matches_mmdet(seed, assign_all):
  rng = np.random.default_rng(seed)
  m, n = 9, 300
  # Coarse grids make exact IoU ties between priors (low-quality matches
  # with gt_max_assign_all) and between GTs (argmax's first index).
  gt = _boxes(rng, m, grid=8.0).astype(np.float32)
  gt[3] = gt[1]  # two identical GTs: the later one wins low-quality ties
  priors = _boxes(rng, n, grid=4.0).astype(np.float32)
  gt_valid = np.ones(m, bool)
  gt_valid[[5, 8]] = False  # padding slots
  prior_valid = rng.random(n) > 0.1
  kw = dict(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.1,
            gt_max_assign_all=assign_all)

  fn = jax.jit(lambda *a: assign_sample.max_iou_assign(*a, **kw))
  got, got_max = fn(gt, gt_valid, priors, prior_valid)

  # MMDetection sees only the real GTs (their indices shift) and only the
  # valid priors (invalid ones are -1 here).
  real = np.flatnonzero(gt_valid)
  want_v, want_max_v = _mmdet_assign(gt[real], priors[prior_valid], 0.5, 0.4,
                                     0.1, assign_all)
  want = np.full(n, -1)
  want[prior_valid] = np.where(want_v > 0, real[np.maximum(want_v - 1, 0)] + 1,
                               want_v)
  np.testing.assert_array_equal(np.asarray(got), want)
  np.testing.assert_array_equal(np.asarray(got_max)[prior_valid], want_max_v)


def test_max_iou_assign_without_gts_is_all_negative():
  priors = _boxes(np.random.default_rng(0), 50).astype(np.float32)
  got, _ = assign_sample.max_iou_assign(
      jnp.zeros((4, 4)), jnp.zeros(4, bool), priors, jnp.ones(50, bool),
      pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3)
  np.testing.assert_array_equal(np.asarray(got), 0)


def test_max_iou_assign_never_stores_the_iou_matrix():
  """Compiled for 100 GTs x 200k priors, no buffer holds M x N values."""
  m, n = 100, 200_000
  fn = jax.jit(jax.vmap(lambda g, gv, p, pv: assign_sample.max_iou_assign(
      g, gv, p, pv, pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3)))
  args = (jax.ShapeDtypeStruct((2, m, 4), jnp.float32),
          jax.ShapeDtypeStruct((2, m), bool),
          jax.ShapeDtypeStruct((2, n, 4), jnp.float32),
          jax.ShapeDtypeStruct((2, n), bool))
  mem = fn.lower(*args).compile().memory_analysis()
  assert mem.temp_size_in_bytes < m * n * 4 // 4, mem.temp_size_in_bytes


def test_max_iou_assign_with_constant_anchors_keeps_low_quality_ties():
  """The RPN's anchors are a compile-time constant; low-quality matches
  tie on the anchor grid and must all be found (a failure seen on the
  fixture's portrait image when the two reductions' IoUs differed by FMA
  contraction)."""
  from maskrcnn_jax.ops import anchors as anchor_ops
  anchors = np.concatenate([
      anchor_ops.grid_anchors((-(-1344 // s), -(-800 // s)), s, (8.,),
                              (0.5, 1., 2.)) for s in (4, 8, 16, 32, 64)
  ]).astype(np.float32)
  gt = np.array([[530.2187, 60.7201, 688.23596, 229.58786],
                 [564.1269, 278.8685, 714.69183, 427.78372],
                 [523.4959, 473.7655, 765.60376, 816.16974],
                 [139.00377, 166.92027, 401.637, 347.24902],
                 [152.90335, 148.75801, 449.8591, 425.65582],
                 [331.99536, 736.3228, 533.26184, 937.28534],
                 [481.96548, 814.78406, 578.91516, 905.8997]], np.float32)
  gt_padded = np.zeros((16, 4), np.float32)
  gt_padded[:7] = gt
  gt_valid = np.arange(16) < 7
  fn = jax.jit(jax.vmap(lambda g, v: assign_sample.max_iou_assign(
      g, v, jnp.asarray(anchors), jnp.ones(len(anchors), bool),
      pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3)))
  got = np.asarray(fn(gt_padded[None], gt_valid[None])[0][0])
  want, _ = _mmdet_assign(gt, anchors, 0.7, 0.3, 0.3, True)
  np.testing.assert_array_equal(got, want)
  assert (want == 7).sum() >= 2  # the tie this test is about
