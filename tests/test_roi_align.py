"""RoIAlign against a direct port of mmcv's CPU kernel and hand-made cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax.ops import roi_align as ra


def mmcv_roi_align_reference(feature, box, out_size, spatial_scale,
                             valid_hw=None):
  """Loop-for-loop port of mmcv roi_align_cpu.cpp (aligned, sampling 0).

  feature: (H, W, C) float32; box: XYXY; valid_hw: map size used by the
  kernel (defaults to the array size).
  """
  f32 = np.float32
  height, width = valid_hw if valid_hw is not None else feature.shape[:2]
  start_w = f32(box[0]) * f32(spatial_scale) - f32(0.5)
  start_h = f32(box[1]) * f32(spatial_scale) - f32(0.5)
  end_w = f32(box[2]) * f32(spatial_scale) - f32(0.5)
  end_h = f32(box[3]) * f32(spatial_scale) - f32(0.5)
  roi_w, roi_h = f32(end_w - start_w), f32(end_h - start_h)
  bin_h, bin_w = f32(roi_h / f32(out_size)), f32(roi_w / f32(out_size))
  grid_h = int(math.ceil(roi_h / f32(out_size)))
  grid_w = int(math.ceil(roi_w / f32(out_size)))
  count = max(grid_h * grid_w, 1)
  out = np.zeros((out_size, out_size, feature.shape[2]), np.float64)
  for ph in range(out_size):
    for pw in range(out_size):
      acc = np.zeros(feature.shape[2], np.float64)
      for iy in range(grid_h):
        y = f32(f32(start_h + f32(ph) * bin_h) +
                f32(f32(f32(iy + .5) * bin_h) / f32(grid_h)))
        for ix in range(grid_w):
          x = f32(f32(start_w + f32(pw) * bin_w) +
                  f32(f32(f32(ix + .5) * bin_w) / f32(grid_w)))
          if y < -1.0 or y > height or x < -1.0 or x > width:
            continue
          yy, xx = max(y, f32(0)), max(x, f32(0))
          y_low, x_low = int(yy), int(xx)
          if y_low >= height - 1:
            y_low = y_high = height - 1
            yy = f32(y_low)
          else:
            y_high = y_low + 1
          if x_low >= width - 1:
            x_low = x_high = width - 1
            xx = f32(x_low)
          else:
            x_high = x_low + 1
          ly, lx = f32(yy - y_low), f32(xx - x_low)
          hy, hx = f32(1 - ly), f32(1 - lx)
          acc += (hy * hx * feature[y_low, x_low] + hy * lx *
                  feature[y_low, x_high] + ly * hx * feature[y_high, x_low] +
                  ly * lx * feature[y_high, x_high])
      out[ph, pw] = acc / count
  return out.astype(np.float32)


def _group_by_image(boxes, batch_index, num_images):
  """RoIs image-major in equal groups (padded with zero boxes), as the
  'dense' strategy takes them; returns boxes, batch index, group size and
  each input RoI's row."""
  per_image = max(np.bincount(batch_index, minlength=num_images).max(), 1)
  grouped = np.zeros((num_images * per_image, 4), np.float32)
  rows = np.zeros(len(boxes), np.int64)
  filled = np.zeros(num_images, np.int64)
  for r, b in enumerate(batch_index):
    rows[r] = b * per_image + filled[b]
    filled[b] += 1
  grouped[rows] = boxes
  return (grouped, np.repeat(np.arange(num_images, dtype=np.int32),
                             per_image), per_image, rows)


def _run(features, boxes, batch_index, valid_hw, out_size, strides,
         chunk_size=4, tiers=None, strategy='chunked', cells_per_step=None):
  extra = {} if cells_per_step is None else dict(cells_per_step=cells_per_step)
  rows = None
  if strategy == 'dense':
    boxes, batch_index, per_image, rows = _group_by_image(
        boxes, batch_index, features[0].shape[0])
    extra['rois_per_image'] = per_image
  fn = jax.jit(lambda f, b, i, v: ra.multilevel_roi_align(
      f, b, i, v, output_size=out_size, strides=strides,
      chunk_size=chunk_size, tiers=tiers, strategy=strategy, **extra))
  out = np.asarray(fn([jnp.asarray(f) for f in features], jnp.asarray(boxes),
                      jnp.asarray(batch_index), jnp.asarray(valid_hw)))
  return out if rows is None else out[rows]


def test_hand_computed_single_bin():
  # 1x1 output over a 2x2 box at stride 1: aligned start = -0.5 + 0.5*1...
  feat = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
  # Box [1, 1, 3, 3] -> start 0.5, roi 2, grid 2: samples at 1.0 and 2.0,
  # i.e. exactly cells (1,1),(1,2),(2,1),(2,2): mean = (5+6+9+10)/4 = 7.5.
  out = _run([feat[None]], np.array([[1., 1., 3., 3.]], np.float32),
             np.zeros(1, np.int32), np.array([[[4, 4]]], np.int32), 1, [1])
  np.testing.assert_allclose(out[0, 0, 0, 0], 7.5, rtol=0, atol=1e-6)
  # 2x2 output: each bin has one sample at the bin centre.
  out = _run([feat[None]], np.array([[1., 1., 3., 3.]], np.float32),
             np.zeros(1, np.int32), np.array([[[4, 4]]], np.int32), 2, [1])
  np.testing.assert_allclose(out[0, ..., 0], [[5., 6.], [9., 10.]],
                             atol=1e-6)


@pytest.mark.parametrize('strategy', ra.STRATEGIES)
def test_border_rules_match_reference(strategy):
  rng = np.random.default_rng(0)
  feat = rng.normal(size=(6, 7, 3)).astype(np.float32)
  boxes = np.array([
      [0., 0., 7., 6.],       # whole map
      [-3., -2., 2., 2.],     # starts before the map (samples < 0)
      [5., 4., 9., 8.],       # runs past the end (clamp to last cell)
      [2., 2., 2., 4.],       # zero width -> zeros
      [1.2, 1.7, 1.9, 2.1],   # sub-cell
  ], np.float32)
  out = _run([feat[None]], boxes, np.zeros(5, np.int32),
             np.array([[[6, 7]]], np.int32), 7, [1], chunk_size=2,
             strategy=strategy, cells_per_step=128)
  for i, box in enumerate(boxes):
    ref = mmcv_roi_align_reference(feat, box, 7, 1.0)
    np.testing.assert_allclose(out[i], ref, rtol=1e-5, atol=1e-5)


def _random_multilevel_case(n=60):
  rng = np.random.default_rng(1)
  strides = [4, 8, 16, 32]
  canvas = (256, 320)
  features = [rng.normal(size=(2, canvas[0] // s, canvas[1] // s, 5))
              .astype(np.float32) for s in strides]
  pad_hw = np.array([[256, 320], [192, 224]])
  valid_hw = np.stack([np.ceil(pad_hw / s) for s in strides],
                      axis=1).astype(np.int32)
  img_hw = np.array([[250, 318], [180, 220]], np.float32)
  boxes, batch = [], []
  for _ in range(n):
    b = rng.integers(2)
    h, w = img_hw[b]
    kind = rng.integers(4)
    if kind == 0:   # elongated wide
      bw, bh = rng.uniform(100, w), rng.uniform(1, 12)
    elif kind == 1:  # elongated tall
      bw, bh = rng.uniform(1, 12), rng.uniform(100, h)
    elif kind == 2:  # small
      bw, bh = rng.uniform(0.5, 40, size=2)
    else:
      bw, bh = rng.uniform(20, min(w, h), size=2)
    x1 = rng.uniform(0, max(w - bw, 1e-3))
    y1 = rng.uniform(0, max(h - bh, 1e-3))
    box = np.clip([x1, y1, x1 + bw, y1 + bh], 0, [w, h, w, h])
    boxes.append(box)
    batch.append(b)
  return (features, np.asarray(boxes, np.float32),
          np.asarray(batch, np.int32), valid_hw, strides)


@pytest.mark.parametrize('cells_per_step', [256, 4096, 2 ** 18])
def test_tiered_equals_chunked(cells_per_step):
  """'tiered' (loops per tier, any chunking) gives 'chunked''s values."""
  features, boxes, batch, valid_hw, strides = _random_multilevel_case()
  ref = _run(features, boxes, batch, valid_hw, 7, strides, chunk_size=16)
  out = _run(features, boxes, batch, valid_hw, 7, strides,
             strategy='tiered', cells_per_step=cells_per_step)
  np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_tiered_gradient_equals_chunked_autodiff():
  """The custom VJP (one gradient buffer) equals autodiff of 'chunked'."""
  features, boxes, batch, valid_hw, strides = _random_multilevel_case(40)
  cot = np.random.default_rng(3).normal(size=(40, 7, 7, 5)).astype(
      np.float32)

  def grads(strategy):
    def loss(f):
      out = ra.multilevel_roi_align(
          f, jnp.asarray(boxes), jnp.asarray(batch), jnp.asarray(valid_hw),
          output_size=7, strides=strides, chunk_size=8, strategy=strategy,
          cells_per_step=2048)
      return jnp.sum(out * cot)
    return jax.jit(jax.grad(loss))([jnp.asarray(f) for f in features])

  for g_t, g_c in zip(grads('tiered'), grads('chunked')):
    np.testing.assert_allclose(np.asarray(g_t), np.asarray(g_c), rtol=1e-5,
                               atol=1e-5)


def test_dense_equals_chunked_values_and_gradients():
  """'dense' (whole-level weights, its own backward) gives 'chunked''s values
  and feature gradients, on both images, every level and the second
  image's smaller valid maps."""
  features, boxes, batch, valid_hw, strides = _random_multilevel_case(40)
  grouped, index, per_image, rows = _group_by_image(boxes, batch, 2)
  cot = np.random.default_rng(4).normal(
      size=(len(grouped), 14, 14, 5)).astype(np.float32)
  cot[np.setdiff1d(np.arange(len(grouped)), rows)] = 0  # padding RoIs

  def pooled_and_grads(strategy, **kw):
    def loss(f):
      out = ra.multilevel_roi_align(
          f, jnp.asarray(grouped), jnp.asarray(index),
          jnp.asarray(valid_hw), output_size=14, strides=strides,
          strategy=strategy, **kw)
      return jnp.sum(out * cot), out
    return jax.jit(jax.grad(loss, has_aux=True))(
        [jnp.asarray(f) for f in features])

  g_d, out_d = pooled_and_grads('dense', rois_per_image=per_image)
  g_c, out_c = pooled_and_grads('chunked', chunk_size=8)
  np.testing.assert_allclose(np.asarray(out_d)[rows],
                             np.asarray(out_c)[rows], rtol=1e-5, atol=1e-5)
  used = set(np.asarray(ra.map_roi_levels(jnp.asarray(boxes), 4)).tolist())
  assert len(used) >= 2
  for level, (a, b) in enumerate(zip(g_d, g_c)):
    assert (np.abs(np.asarray(b)).max() > 0) == (level in used)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                               atol=1e-5)


def test_dense_program_has_no_loop_and_no_feature_gather():
  """Forward and backward: no loop, no conditional, and no gather or
  scatter of feature values (13 channels here; the small per-RoI index and
  weight gathers and scatters carry no channel axis)."""
  _, boxes, batch, valid_hw, strides = _random_multilevel_case(20)
  rng = np.random.default_rng(5)
  features = [jnp.asarray(rng.normal(size=(2, 256 // s, 320 // s, 13)),
                          jnp.float32) for s in strides]
  grouped, index, per_image, _ = _group_by_image(boxes, batch, 2)
  fn = jax.jit(jax.grad(lambda f, b, i, v: jnp.sum(ra.multilevel_roi_align(
      f, b, i, v, output_size=7, strides=strides, strategy='dense',
      rois_per_image=per_image))))
  text = fn.lower(features, jnp.asarray(grouped), jnp.asarray(index),
                  jnp.asarray(valid_hw)).compile().as_text()
  assert ' while(' not in text and ' conditional(' not in text
  for line in text.splitlines():
    if ' gather(' in line or ' scatter(' in line:
      shape = line.split('=', 1)[1].split('{', 1)[0]
      assert not shape.rstrip().endswith(',13]'), line


def test_dense_needs_rois_grouped_by_image():
  features, boxes, batch, valid_hw, strides = _random_multilevel_case(5)
  with pytest.raises(ValueError, match='rois_per_image'):
    ra.multilevel_roi_align(
        [jnp.asarray(f) for f in features], jnp.asarray(boxes),
        jnp.asarray(batch), jnp.asarray(valid_hw), output_size=7,
        strides=strides, strategy='dense')
  with pytest.raises(ValueError, match='maps hold 2'):
    ra.multilevel_roi_align(
        [jnp.asarray(f) for f in features], jnp.asarray(boxes[:4]),
        jnp.asarray(batch[:4]), jnp.asarray(valid_hw), output_size=7,
        strides=strides, strategy='dense', rois_per_image=1)


def test_tiered_program_has_no_conditionals():
  features, boxes, batch, valid_hw, strides = _random_multilevel_case(20)
  fn = jax.jit(lambda f, b, i, v: ra.multilevel_roi_align(
      f, b, i, v, output_size=7, strides=strides, strategy='tiered'))
  text = fn.lower([jnp.asarray(f) for f in features], jnp.asarray(boxes),
                  jnp.asarray(batch), jnp.asarray(valid_hw)).compile().as_text()
  assert ' conditional(' not in text
  assert text.count(' while(') == 1  # One loop for all tiers.


@pytest.mark.parametrize('strategy', ra.STRATEGIES)
@pytest.mark.parametrize('out_size', [7, 14])
def test_random_multilevel_matches_reference(out_size, strategy):
  """Random RoIs of all sizes and aspect ratios on a 4-level pyramid.

  The second image's valid map is smaller than the canvas: cells past it
  must be treated as absent (mmcv sees a smaller padded batch).
  """
  features, boxes, batch, valid_hw, strides = _random_multilevel_case()
  out = _run(features, boxes, batch, valid_hw, out_size, strides,
             chunk_size=16, strategy=strategy)
  levels = np.asarray(ra.map_roi_levels(jnp.asarray(boxes), 4))
  for i, box in enumerate(boxes):
    lvl, b = levels[i], batch[i]
    ref = mmcv_roi_align_reference(features[lvl][b], box, out_size,
                                   1.0 / strides[lvl],
                                   valid_hw=tuple(valid_hw[b, lvl]))
    # A 1-ulp difference in a sample coordinate (XLA may fuse the
    # multiply-add) moves its bilinear weight by up to ulp(x) ~ 1e-5 at
    # x ~ 100, hence the absolute tolerance for unit-variance features.
    np.testing.assert_allclose(out[i], ref, rtol=1e-4, atol=1e-4,
                               err_msg=f'roi {i} box {box} level {lvl}')


def test_level_mapping():
  # scale < 112 -> 0, [112, 224) -> 1, [224, 448) -> 2, >= 448 -> 3.
  boxes = jnp.array([[0, 0, 111.9, 111.9], [0, 0, 112, 112],
                     [0, 0, 223, 223], [0, 0, 224, 224], [0, 0, 447, 447],
                     [0, 0, 448, 448], [0, 0, 1000, 1000], [0, 0, 0, 0]],
                    jnp.float32)
  np.testing.assert_array_equal(ra.map_roi_levels(boxes, 4),
                                [0, 1, 1, 2, 2, 3, 3, 0])


def test_tier_selection_is_exact_for_every_tier():
  """The same RoIs computed with only the top tier give the same result."""
  rng = np.random.default_rng(2)
  feat = rng.normal(size=(1, 64, 64, 4)).astype(np.float32)
  boxes = np.array([[1, 1, 5, 5], [0, 0, 60, 3], [2, 2, 40, 40],
                    [10, 0, 12, 63]], np.float32)
  args = ([feat], boxes, np.zeros(4, np.int32),
          np.array([[[64, 64]]], np.int32), 7, [1])
  tiered = _run(*args, chunk_size=1)
  top_only = _run(*args, chunk_size=1, tiers=())
  np.testing.assert_allclose(tiered, top_only, rtol=1e-5, atol=1e-5)


def test_required_top_tier_covers_standard_canvas():
  maps = [(200, 336), (100, 168), (50, 84), (25, 42)]
  assert ra.required_top_tier(maps, [4, 8, 16, 32], 56) == 64
