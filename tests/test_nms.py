"""Tests for `maskrcnn_jax.ops.nms` against a plain numpy greedy NMS.

The reference below mirrors mmcv 2.x `nms_cpu` (offset 0) step by step in
float32 numpy (no FMA), and `batched_nms` by applying the same float32 group
offsets and running one NMS on the valid boxes only.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax.ops import nms as nms_lib

# ----------------------------------------------------------------------------
# numpy reference (mmcv nms_cpu semantics)
# ----------------------------------------------------------------------------


def ref_keep_sorted(boxes, thr):
  """Greedy NMS over boxes sorted by descending score; returns (N,) bool."""
  b = np.asarray(boxes, np.float32)
  n = b.shape[0]
  thr = np.float32(thr)
  area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  suppressed = np.zeros(n, bool)
  keep = np.zeros(n, bool)
  with np.errstate(invalid='ignore', divide='ignore'):
    for i in range(n):
      if suppressed[i]:
        continue
      keep[i] = True
      j = np.arange(i + 1, n)
      xx1 = np.maximum(b[i, 0], b[j, 0])
      yy1 = np.maximum(b[i, 1], b[j, 1])
      xx2 = np.minimum(b[i, 2], b[j, 2])
      yy2 = np.minimum(b[i, 3], b[j, 3])
      w = np.maximum(np.float32(0), xx2 - xx1)
      h = np.maximum(np.float32(0), yy2 - yy1)
      inter = w * h
      ovr = inter / (area[i] + area[j] - inter)
      suppressed[j[ovr > thr]] = True
  return keep


def ref_nms(boxes, scores, thr, valid=None):
  """mmcv `nms` on the valid boxes; returns kept input indices (score order)."""
  n = len(scores)
  valid = np.ones(n, bool) if valid is None else np.asarray(valid)
  order = np.argsort(-np.asarray(scores, np.float32), kind='stable')
  order = order[valid[order]]
  return order[ref_keep_sorted(np.asarray(boxes, np.float32)[order], thr)]


def ref_offset_boxes(boxes, idxs, valid=None):
  """mmcv `batched_nms` shift (max over the valid boxes only), float32."""
  boxes = np.asarray(boxes, np.float32)
  valid = np.ones(len(boxes), bool) if valid is None else np.asarray(valid)
  max_coordinate = boxes[valid].max() if valid.any() else np.float32(0)
  offsets = np.asarray(idxs).astype(np.float32) * (
      max_coordinate + np.float32(1))
  return boxes + offsets[:, None]


def ref_batched_nms(boxes, scores, idxs, thr, valid=None):
  return ref_nms(ref_offset_boxes(boxes, idxs, valid), scores, thr, valid)


def ref_iou(a, b):
  a = np.asarray(a, np.float32)
  b = np.asarray(b, np.float32)
  area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
  area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  w = np.maximum(np.float32(0), np.minimum(a[..., 2], b[..., 2]) -
                 np.maximum(a[..., 0], b[..., 0]))
  h = np.maximum(np.float32(0), np.minimum(a[..., 3], b[..., 3]) -
                 np.maximum(a[..., 1], b[..., 1]))
  inter = w * h
  return inter / (area_a + area_b - inter)


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------


def make_boxes(rng, n, img=200.0):
  """Hard mix: clusters of heavy overlap, duplicates, zero-area, fractions."""
  centers = rng.random((max(1, n // 8), 2)) * img
  sizes = rng.random((len(centers), 2)) * 40 + 5
  k = rng.integers(0, len(centers), n)
  ctr = centers[k] + rng.normal(0, 0.1, (n, 2)) * sizes[k]
  wh = sizes[k] * np.exp(rng.normal(0, 0.15, (n, 2)))
  boxes = np.concatenate([ctr - wh / 2, ctr + wh / 2], 1)
  if n >= 4:
    dup = rng.choice(n, n // 4, replace=False)
    boxes[dup] = boxes[rng.integers(0, n, len(dup))]  # Exact duplicates.
    zero = rng.choice(n, max(1, n // 10), replace=False)
    boxes[zero, 2] = boxes[zero, 0]  # Zero width.
    boxes[zero[::2], 3] = boxes[zero[::2], 1]  # Some zero width and height.
  return boxes.astype(np.float32)


def make_scores(rng, n):
  # Coarse values so that ties occur.
  return (rng.integers(0, max(2, n // 3), n) / max(2, n // 3)).astype(
      np.float32)


keep_sorted_jit = jax.jit(
    nms_lib.nms_keep_sorted, static_argnames=('tile_size',))
nms_jit = jax.jit(nms_lib.nms, static_argnames=('max_output', 'tile_size'))
batched_nms_jit = jax.jit(
    nms_lib.batched_nms, static_argnames=('max_output', 'tile_size'))


def as_list(indices, keep_valid):
  indices = np.asarray(indices)
  keep_valid = np.asarray(keep_valid)
  n = int(keep_valid.sum())
  assert keep_valid[:n].all() and not keep_valid[n:].any()  # A prefix.
  return indices[:n].tolist()


# ----------------------------------------------------------------------------
# nms_keep_sorted
# ----------------------------------------------------------------------------


def _check_against_reference(rng, n, keep_fn):
  """keep_fn(boxes, valid, thr) equals the greedy reference on n random
  sorted boxes (15% invalid) at three thresholds."""
  for thr in (0.3, 0.5, 0.7):
    boxes = make_boxes(rng, n)
    valid = rng.random(n) > 0.15
    got = np.asarray(keep_fn(boxes, valid, thr))
    expected = np.zeros(n, bool)
    expected[np.flatnonzero(valid)[ref_keep_sorted(boxes[valid], thr)]] = True
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize('n,tile_size', [
    (1, 256),
    (5, 256),  # N < tile.
    (100, 256),  # N < tile.
    (37, 8),  # Not a multiple of the tile.
    (64, 16),  # Multiple of the tile.
    (300, 64),  # Not a multiple, many tiles.
])
def test_keep_sorted_matches_reference(n, tile_size):
  rng = np.random.default_rng(n * 1000 + tile_size)
  _check_against_reference(
      rng, n, lambda b, v, thr: keep_sorted_jit(b, v, thr,
                                                tile_size=tile_size))


def test_suppression_chains_cross_tiles():
  # Each box overlaps its neighbour (IoU 7/13 > 0.5) but not the one after:
  # greedy keeps every other box, which needs the full chain of decisions
  # across tiles and the worst-case number of fixed-point iterations.
  n = 45
  i = np.arange(n, dtype=np.float32)
  boxes = np.stack([3 * i, 0 * i, 3 * i + 10, 0 * i + 10], 1)
  valid = np.ones(n, bool)
  for tile_size in (4, 8, 45, 256):
    got = np.asarray(keep_sorted_jit(boxes, valid, 0.5, tile_size=tile_size))
    np.testing.assert_array_equal(got, np.arange(n) % 2 == 0)
  # Random dense clusters with a tiny tile.
  rng = np.random.default_rng(1)
  boxes = make_boxes(rng, 45, img=30.0)
  got = np.asarray(keep_sorted_jit(boxes, valid, 0.5, tile_size=4))
  np.testing.assert_array_equal(got, ref_keep_sorted(boxes, 0.5))


def test_keep_sorted_invalid_and_empty():
  rng = np.random.default_rng(2)
  boxes = make_boxes(rng, 20)
  got = keep_sorted_jit(boxes, np.zeros(20, bool), 0.5, tile_size=8)
  assert not np.asarray(got).any()
  # Invalid boxes never suppress: an invalid copy in front of a valid box.
  boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
  got = keep_sorted_jit(boxes, np.array([False, True]), 0.5)
  np.testing.assert_array_equal(np.asarray(got), [False, True])
  assert nms_lib.nms_keep_sorted(
      np.zeros((0, 4), np.float32), np.zeros(0, bool), 0.5).shape == (0,)


def test_iou_exactly_threshold_not_suppressed():
  # inter = 2, union = 3 + 3 - 2 = 4: IoU is exactly 0.5 in float32.
  boxes = np.array([[0, 0, 3, 1], [1, 0, 4, 1]], np.float32)
  assert ref_iou(boxes[0], boxes[1]) == np.float32(0.5)
  valid = np.ones(2, bool)
  got = keep_sorted_jit(boxes, valid, 0.5)
  np.testing.assert_array_equal(np.asarray(got), [True, True])
  below = float(np.nextafter(np.float32(0.5), np.float32(0)))
  got = keep_sorted_jit(boxes, valid, below)
  np.testing.assert_array_equal(np.asarray(got), [True, False])
  scores = np.array([0.9, 0.8], np.float32)
  assert as_list(*nms_jit(boxes, scores, None, 0.5, max_output=4)) == [0, 1]
  assert as_list(*nms_jit(boxes, scores, None, below, max_output=4)) == [0]


def test_iou_is_bit_exact():
  """Thresholds at the exact float32 IoU: any 1-ulp error flips a decision."""
  rng = np.random.default_rng(3)
  p = 256
  a = rng.random((p, 4)).astype(np.float32) * 300
  a[:, 2:] = a[:, :2] + rng.random((p, 2)).astype(np.float32) * 100 + 1
  b = a + rng.normal(0, 8, (p, 4)).astype(np.float32)
  b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 0.5)
  iou = ref_iou(a, b)
  a, b, iou = a[iou > 0], b[iou > 0], iou[iou > 0]
  p = len(iou)
  assert p > 200
  below = np.nextafter(iou, np.float32(-1))
  pairs = np.stack([a, b], 1)
  valid = np.ones((p, 2), bool)
  # With `valid` a traced input, and a compile-time constant (which lets XLA
  # drop the tile loop and fuse the area computation into the IoU kernel).
  f = jax.jit(jax.vmap(nms_lib.nms_keep_sorted, in_axes=(0, 0, 0)))
  g = jax.jit(jax.vmap(
      lambda b, t: nms_lib.nms_keep_sorted(b, jnp.ones(2, bool), t)))
  for got_at, got_below in ((f(pairs, valid, iou), f(pairs, valid, below)),
                            (g(pairs, iou), g(pairs, below))):
    np.testing.assert_array_equal(np.asarray(got_at), valid)
    np.testing.assert_array_equal(
        np.asarray(got_below), np.tile([True, False], (p, 1)))


# ----------------------------------------------------------------------------
# nms / batched_nms
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('n,tile_size,max_output', [
    (7, 256, 10),  # max_output > N.
    (90, 16, 200),
    (300, 64, 300),
    (300, 64, 25),  # Truncated like mmcv `max_num`.
])
def test_nms_matches_reference(n, tile_size, max_output):
  rng = np.random.default_rng(n + max_output)
  boxes = make_boxes(rng, n)
  scores = make_scores(rng, n)
  valid = rng.random(n) > 0.2
  got = as_list(*nms_jit(boxes, scores, valid, 0.5, max_output=max_output,
                         tile_size=tile_size))
  assert got == ref_nms(boxes, scores, 0.5, valid)[:max_output].tolist()


@pytest.mark.parametrize('n,num_groups,tile_size', [
    (9, 3, 256),
    (120, 5, 32),
    (300, 80, 64),
])
def test_batched_nms_matches_reference(n, num_groups, tile_size):
  rng = np.random.default_rng(n + num_groups)
  for thr in (0.5, 0.7):
    boxes = make_boxes(rng, n)
    scores = make_scores(rng, n)
    idxs = rng.integers(0, num_groups, n).astype(np.int32)
    valid = rng.random(n) > 0.2
    # Huge invalid boxes must not enter `boxes.max()`.
    boxes[~valid] *= 50
    got = as_list(*batched_nms_jit(boxes, scores, idxs, valid, thr,
                                   max_output=n, tile_size=tile_size))
    assert got == ref_batched_nms(boxes, scores, idxs, thr, valid).tolist()


def test_score_ties_keep_lower_index():
  boxes = np.array([[0, 0, 10, 10]] * 3 + [[50, 50, 60, 60]] * 2, np.float32)
  scores = np.array([0.5, 0.5, 0.5, 0.5, 0.9], np.float32)
  got = as_list(*nms_jit(boxes, scores, None, 0.5, max_output=5))
  assert got == [4, 0]
  # Non-overlapping ties are output by ascending index.
  boxes = np.array([[20 * i, 0, 20 * i + 10, 10] for i in range(5)],
                   np.float32)
  scores = np.array([0.1, 0.7, 0.7, 0.3, 0.7], np.float32)
  assert as_list(*nms_jit(boxes, scores, None, 0.5, max_output=5)) == [
      1, 2, 4, 3, 0]
  # First valid of the tied duplicates wins.
  boxes = np.array([[0, 0, 10, 10]] * 3, np.float32)
  scores = np.full(3, 0.5, np.float32)
  got = as_list(*nms_jit(boxes, scores, np.array([False, True, True]), 0.5,
                         max_output=3))
  assert got == [1]


def test_class_aware():
  boxes = np.array([[0, 0, 10, 10]] * 4, np.float32)
  scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
  idxs = np.array([0, 1, 0, 2], np.int32)
  got = as_list(*batched_nms_jit(boxes, scores, idxs, None, 0.5,
                                 max_output=4))
  assert got == [0, 1, 3]
  # Identical boxes of the same class: only the first survives.
  got = as_list(*nms_jit(boxes, scores, None, 0.5, max_output=4))
  assert got == [0]


def test_zero_area_boxes_never_suppress():
  # 0 / 0 = NaN in mmcv, NaN > thr is False: identical zero-area boxes stay.
  boxes = np.array([[5, 5, 5, 9], [5, 5, 5, 9], [1, 1, 1, 1]], np.float32)
  scores = np.array([0.9, 0.8, 0.7], np.float32)
  got = as_list(*nms_jit(boxes, scores, None, 0.5, max_output=3))
  assert got == [0, 1, 2] == ref_nms(boxes, scores, 0.5).tolist()


def _offset_sensitive_pairs(rng, group, num=4000, extra_max=None):
  """Random same-group pairs and their IoUs before/after the mmcv shift."""
  a = rng.random((num, 4)).astype(np.float32) * 700
  a[:, 2:] = a[:, :2] + rng.random((num, 2)).astype(np.float32) * 80 + 1
  b = a + rng.normal(0, 5, (num, 4)).astype(np.float32)
  b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 0.5)
  pairs = np.clip(np.stack([a, b], 1), 0, 799.5).astype(np.float32)
  pairs[:, 0, 2] = 799.5  # Same max coordinate in every pair.
  idxs = np.full(2, group, np.int32)
  max_coordinate = np.float32(799.5 if extra_max is None else extra_max)
  shifted = pairs + idxs[None, :, None].astype(np.float32) * (
      max_coordinate + np.float32(1))
  return pairs, ref_iou(pairs[:, 0], pairs[:, 1]), ref_iou(
      shifted[:, 0], shifted[:, 1])


def test_batched_offset_perturbation_reproduced():
  rng = np.random.default_rng(4)
  pairs, plain, shifted = _offset_sensitive_pairs(rng, group=79)
  scores = np.array([0.9, 0.8], np.float32)
  idxs = np.array([79, 79], np.int32)
  f = jax.jit(jax.vmap(
      lambda b, t: nms_lib.batched_nms(b, scores, idxs, None, t, 2),
      in_axes=(0, 0)))
  ok = (plain > 0) & (shifted > 0)
  # The shift changes the IoU of many pairs; mmcv decides on the shifted one.
  changed = ok & (shifted != plain)
  assert changed.sum() > 10
  p, thr = pairs[changed], plain[changed]
  _, keep_valid = f(p, thr)
  expected_second = ~(shifted[changed] > thr)
  np.testing.assert_array_equal(np.asarray(keep_valid)[:, 1], expected_second)
  assert expected_second.any() and not expected_second.all()
  # Bit exactness of the shifted IoU, both sides of the threshold.
  p, s = pairs[ok], shifted[ok]
  _, keep_valid = f(p, s)
  assert np.asarray(keep_valid).all()
  _, keep_valid = f(p, np.nextafter(s, np.float32(-1)))
  np.testing.assert_array_equal(
      np.asarray(keep_valid), np.tile([True, False], (len(p), 1)))


def test_invalid_boxes_do_not_enter_offset_max():
  rng = np.random.default_rng(5)
  pairs, _, shifted = _offset_sensitive_pairs(rng, group=40)
  _, _, shifted_big = _offset_sensitive_pairs(
      np.random.default_rng(5), group=40, extra_max=5000.0)
  sel = (shifted > 0) & (shifted_big > shifted)
  assert sel.sum() > 5
  # A third, invalid box with a huge coordinate (which would change the max).
  far = np.broadcast_to(np.array([[4000, 4000, 5000, 5000]], np.float32),
                        (sel.sum(), 1, 4))
  boxes = np.concatenate([pairs[sel], far], 1)
  scores = np.array([0.9, 0.8, 0.95], np.float32)
  idxs = np.array([40, 40, 40], np.int32)
  valid = np.array([True, True, False])
  f = jax.jit(jax.vmap(
      lambda b, t: nms_lib.batched_nms(b, scores, idxs, valid, t, 3),
      in_axes=(0, 0)))
  indices, keep_valid = f(boxes, shifted[sel])
  # With the max over valid boxes only, IoU == thr: nothing is suppressed.
  np.testing.assert_array_equal(np.asarray(keep_valid),
                                np.tile([True, True, False], (sel.sum(), 1)))
  np.testing.assert_array_equal(np.asarray(indices)[:, :2],
                                np.tile([0, 1], (sel.sum(), 1)))


def test_vmap_matches_reference():
  rng = np.random.default_rng(6)
  batch, n = 3, 70
  boxes = np.stack([make_boxes(rng, n) for _ in range(batch)])
  scores = np.stack([make_scores(rng, n) for _ in range(batch)])
  idxs = rng.integers(0, 4, (batch, n)).astype(np.int32)
  valid = rng.random((batch, n)) > 0.2
  valid[2, 20:] = False  # Different number of active tiles per element.
  f = jax.jit(jax.vmap(
      lambda b, s, i, v: nms_lib.batched_nms(b, s, i, v, 0.5, n, 16)))
  indices, keep_valid = f(boxes, scores, idxs, valid)
  g = jax.jit(jax.vmap(
      lambda b, v: nms_lib.nms_keep_sorted(b, v, 0.6, tile_size=16)))
  keep = np.asarray(g(boxes, valid))
  for k in range(batch):
    assert as_list(indices[k], keep_valid[k]) == ref_batched_nms(
        boxes[k], scores[k], idxs[k], 0.5, valid[k]).tolist()
    expected = np.zeros(n, bool)
    expected[np.flatnonzero(valid[k])[
        ref_keep_sorted(boxes[k][valid[k]], 0.6)]] = True
    np.testing.assert_array_equal(keep[k], expected)


def test_compiles_once():
  traces = []

  @jax.jit
  def f(boxes, scores, idxs, valid, thr):
    traces.append(1)  # Runs only while tracing.
    return nms_lib.batched_nms(boxes, scores, idxs, valid, thr, 50,
                               tile_size=32)

  rng = np.random.default_rng(7)
  for seed in range(3):
    n = 100
    boxes = make_boxes(rng, n)
    out = f(boxes, make_scores(rng, n), rng.integers(0, 3, n).astype(np.int32),
            rng.random(n) > 0.1 * seed, np.float32(0.3 + 0.2 * seed))
    jax.block_until_ready(out)
  assert len(traces) == 1
  assert f._cache_size() == 1


def test_empty_and_all_invalid():
  indices, keep_valid = nms_lib.batched_nms(
      np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
      np.zeros(0, np.int32), None, 0.5, 5)
  assert indices.shape == (5,) and indices.dtype == jnp.int32
  assert not np.asarray(keep_valid).any()
  rng = np.random.default_rng(8)
  indices, keep_valid = batched_nms_jit(
      make_boxes(rng, 10), make_scores(rng, 10), np.zeros(10, np.int32),
      np.zeros(10, bool), 0.5, max_output=4)
  assert not np.asarray(keep_valid).any()
  np.testing.assert_array_equal(np.asarray(indices), 0)


def test_timing_print():
  """Prints nms_keep_sorted CPU timings (run with -s to see them)."""
  rng = np.random.default_rng(9)
  for n in (1000, 4096):
    centers = rng.random((n // 20, 2)) * 800
    k = rng.integers(0, len(centers), n)
    wh = rng.random((n, 2)) * 100 + 10
    ctr = centers[k] + rng.normal(0, 10, (n, 2))
    boxes = np.concatenate([ctr - wh / 2, ctr + wh / 2], 1).astype(np.float32)
    valid = np.ones(n, bool)
    keep = keep_sorted_jit(boxes, valid, 0.7).block_until_ready()
    reps = 5
    start = time.perf_counter()
    for _ in range(reps):
      keep_sorted_jit(boxes, valid, 0.7).block_until_ready()
    ms = (time.perf_counter() - start) / reps * 1e3
    print(f'\nnms_keep_sorted N={n} (tile 256, kept {int(keep.sum())}): '
          f'{ms:.2f} ms/call on {jax.devices()[0].platform}')


# ----------------------------------------------------------------------------
# 'dense' strategy (accelerators): same results as the reference
# ----------------------------------------------------------------------------

dense_jit = jax.jit(nms_lib.nms_keep_sorted_dense, static_argnames=('steps',))


@pytest.mark.parametrize('n,steps', [(1, 4), (37, 1), (300, 4), (1000, 3)])
def test_dense_keep_sorted_matches_reference(n, steps):
  rng = np.random.default_rng(n + 11)
  _check_against_reference(
      rng, n, lambda b, v, thr: dense_jit(b, v, thr, steps=steps))


def test_dense_suppression_chain_and_exact_threshold():
  # Alternating chain: the worst case for the fixed point (n updates).
  n = 45
  i = np.arange(n, dtype=np.float32)
  boxes = np.stack([3 * i, 0 * i, 3 * i + 10, 0 * i + 10], 1)
  for steps in (1, 4, 7):
    got = np.asarray(dense_jit(boxes, np.ones(n, bool), 0.5, steps=steps))
    np.testing.assert_array_equal(got, np.arange(n) % 2 == 0)
  # IoU exactly at the threshold is kept; one ulp below suppresses.
  boxes = np.array([[0, 0, 3, 1], [1, 0, 4, 1]], np.float32)
  below = float(np.nextafter(np.float32(0.5), np.float32(0)))
  valid = np.ones(2, bool)
  np.testing.assert_array_equal(np.asarray(dense_jit(boxes, valid, 0.5)),
                                [True, True])
  np.testing.assert_array_equal(np.asarray(dense_jit(boxes, valid, below)),
                                [True, False])
  # Invalid boxes never suppress; empty input.
  boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
  np.testing.assert_array_equal(
      np.asarray(dense_jit(boxes, np.array([False, True]), 0.5)),
      [False, True])
  assert nms_lib.nms_keep_sorted_dense(
      np.zeros((0, 4), np.float32), np.zeros(0, bool), 0.5).shape == (0,)


def test_dense_iou_is_bit_exact():
  rng = np.random.default_rng(3)
  p = 256
  a = rng.random((p, 4)).astype(np.float32) * 300
  a[:, 2:] = a[:, :2] + rng.random((p, 2)).astype(np.float32) * 100 + 1
  b = a + rng.normal(0, 8, (p, 4)).astype(np.float32)
  b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 0.5)
  iou = ref_iou(a, b)
  a, b, iou = a[iou > 0], b[iou > 0], iou[iou > 0]
  below = np.nextafter(iou, np.float32(-1))
  pairs = np.stack([a, b], 1)
  valid = np.ones((len(iou), 2), bool)
  f = jax.jit(jax.vmap(nms_lib.nms_keep_sorted_dense))
  np.testing.assert_array_equal(np.asarray(f(pairs, valid, iou)), valid)
  np.testing.assert_array_equal(np.asarray(f(pairs, valid, below)),
                                np.tile([True, False], (len(iou), 1)))


def test_dense_batched_nms_vmap_matches_reference():
  rng = np.random.default_rng(12)
  batch, n = 3, 120
  boxes = np.stack([make_boxes(rng, n) for _ in range(batch)])
  scores = np.stack([make_scores(rng, n) for _ in range(batch)])
  idxs = rng.integers(0, 5, (batch, n)).astype(np.int32)
  valid = rng.random((batch, n)) > 0.2
  boxes[~valid] *= 50
  f = jax.jit(jax.vmap(lambda b, s, i, v: nms_lib.batched_nms(
      b, s, i, v, 0.5, n, strategy='dense')))
  indices, keep_valid = f(boxes, scores, idxs, valid)
  for k in range(batch):
    assert as_list(indices[k], keep_valid[k]) == ref_batched_nms(
        boxes[k], scores[k], idxs[k], 0.5, valid[k]).tolist()
  text = f.lower(boxes, scores, idxs, valid).compile().as_text()
  assert ' conditional(' not in text
  assert text.count(' while(') == 1  # The fixed point only.


def test_group_offsets_match_float32_product():
  rng = np.random.default_rng(13)
  idxs = rng.integers(0, 4096, 5000).astype(np.int32)
  for m in (799.3, 1333.0, 1e-3, 12345.678):
    m32 = np.float32(m)
    got = np.asarray(jax.jit(nms_lib.group_offsets)(idxs, m32))
    np.testing.assert_array_equal(
        got, idxs.astype(np.float32) * (m32 + np.float32(1)))
