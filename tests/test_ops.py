"""Hand-computed cases for boxes, anchors, preprocessing and padding masks."""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax import config as config_lib
from maskrcnn_jax import preprocess
from maskrcnn_jax.models import build
from maskrcnn_jax.models import mask_rcnn
from maskrcnn_jax.ops import anchors
from maskrcnn_jax.ops import boxes as box_ops


def test_decode_clamps_log_size_deltas_and_clips():
  rois = jnp.array([[10., 10., 20., 30.]])
  huge = jnp.array([[0., 0., 100., -100.]])
  out = box_ops.decode_deltas(rois, huge)
  # w = 10 * 1000/16, h = 20 * 16/1000 around the centre (15, 20).
  np.testing.assert_allclose(out[0], [15 - 312.5, 20 - 0.16, 15 + 312.5,
                                      20 + 0.16], rtol=1e-5)
  clipped = box_ops.decode_deltas(rois, huge, image_hw=jnp.array([25, 100]))
  np.testing.assert_allclose(clipped[0], [0, 20 - 0.16, 100, 20 + 0.16],
                             rtol=1e-5)
  np.testing.assert_allclose(box_ops.MAX_LOG_RATIO, 4.135166556742356)


def test_encode_decode_round_trip_with_stds():
  rng = np.random.default_rng(0)
  p = rng.uniform(0, 50, (20, 2))
  props = np.concatenate([p, p + rng.uniform(1, 50, (20, 2))], 1)
  g = rng.uniform(0, 50, (20, 2))
  gts = np.concatenate([g, g + rng.uniform(1, 50, (20, 2))], 1)
  stds = (0.1, 0.1, 0.2, 0.2)
  d = box_ops.encode_deltas(jnp.asarray(props), jnp.asarray(gts), stds)
  np.testing.assert_allclose(box_ops.decode_deltas(jnp.asarray(props), d,
                                                   stds=stds), gts,
                             rtol=1e-5, atol=1e-4)


def test_pairwise_iou():
  a = jnp.array([[0., 0., 10., 10.]])
  b = jnp.array([[5., 0., 15., 10.], [20., 20., 30., 30.], [0, 0, 10, 10]])
  np.testing.assert_allclose(box_ops.pairwise_iou(a, b)[0], [1 / 3, 0, 1],
                             rtol=1e-6)


def test_anchors_worked_example():
  """Spec §8: 480x640 -> 800x1067, padded 800x1088, anchors per level."""
  assert preprocess.rescale_size((480, 640), (1333, 800)) == (800, 1067)
  sizes = [(200, 272), (100, 136), (50, 68), (25, 34), (13, 17)]
  counts = [163200, 40800, 10200, 2550, 663]
  for (h, w), stride, count in zip(sizes, [4, 8, 16, 32, 64], counts):
    a = anchors.grid_anchors((h, w), stride, [8], [0.5, 1., 2.])
    assert a.shape == (count, 4)
  base = anchors.base_anchors(4, [8], [0.5, 1., 2.])
  np.testing.assert_allclose(base, [[-22.627417, -11.313708, 22.627417,
                                     11.313708], [-16, -16, 16, 16],
                                    [-11.313708, -22.627417, 11.313708,
                                     22.627417]], rtol=1e-6)
  # Order ((y * W + x) * A + a): anchor index 3*(1*272 + 2) + 1 is the
  # square anchor of cell (y=1, x=2).
  a = anchors.grid_anchors((200, 272), 4, [8], [0.5, 1., 2.])
  np.testing.assert_allclose(a[3 * (272 + 2) + 1], [8 - 16, 4 - 16, 8 + 16,
                                                    4 + 16])


def test_anchor_valid_flags():
  flags = anchors.anchor_valid_flags((3, 4), jnp.array([[2, 3]]), 2)
  grid = np.asarray(flags).reshape(3, 4, 2)
  assert grid[:2, :3].all() and not grid[2].any() and not grid[:, 3].any()


def test_preprocess_matches_mmcv_rounding_and_cv2():
  image = np.random.default_rng(0).integers(0, 255, (427, 640, 3), np.uint8)
  p = preprocess.prepare_image(image, (1333, 800), ((800, 1344), (1344, 800)))
  assert p.image_hw == (800, 1199) and p.pad_hw == (800, 1216)
  assert p.canvas.shape == (800, 1344, 3)
  np.testing.assert_array_equal(
      p.canvas[:800, :1199],
      cv2.resize(image, (1199, 800), interpolation=cv2.INTER_LINEAR))
  assert not p.canvas[:, 1199:].any() and not p.canvas[800:].any()
  assert p.scale_factor == (1199 / 640, 800 / 427)


def test_read_image_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='missing.png'):
    preprocess.read_image(str(tmp_path / 'missing.png'))
  bad = tmp_path / 'corrupt.jpg'
  bad.write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
  with pytest.raises(ValueError, match='corrupt.jpg'):
    preprocess.read_image(str(bad))


def test_normalize_images_channel_order_and_padding():
  images = jnp.zeros((1, 4, 4, 3), jnp.uint8).at[..., 0].set(10)  # B=10
  cfg = mask_rcnn.InputConfig(mean=(1., 2., 3.), std=(1., 1., 2.),
                              bgr_to_rgb=True)
  x = mask_rcnn.normalize_images(images, jnp.array([[2, 3]]), cfg)
  # RGB order: channel 2 holds the blue value 10 -> (10 - 3) / 2.
  np.testing.assert_allclose(x[0, 0, 0], [-1., -2., 3.5])
  assert not np.asarray(x[0, 2:]).any() and not np.asarray(x[0, :, 3:]).any()


def test_canvas_padding_reproduces_padding_to_pad_shape():
  """Features of an image on a larger canvas equal those of the image
  padded only to its own pad_shape (what MMDetection computes)."""
  config = config_lib.load_config('configs/r50_fpn_1x.py')
  model = build.build_model(config)
  variables = build.init_variables(config, jax.random.PRNGKey(0))
  # Make BN statistics non-trivial so padded cells would leak if unmasked.
  variables = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.3 if 'bias' in str(p[-1]) else x, variables)
  rng = np.random.default_rng(0)
  image = rng.integers(0, 255, (64, 90, 3), np.uint8)
  pad = (64, 96)
  apply = jax.jit(lambda v, im, hw, ph: model.apply(v, im, hw, ph,
                                                    method='features'))
  small = np.zeros((1,) + pad + (3,), np.uint8)
  small[0, :64, :90] = image
  big = np.zeros((1, 128, 160, 3), np.uint8)
  big[0, :64, :90] = image
  hw = np.array([[64, 90]], np.int32)
  ph = np.array([pad], np.int32)
  f_small = apply(variables, small, hw, ph)
  f_big = apply(variables, big, hw, ph)
  f_unmasked = apply(variables, big, hw, np.array([[128, 160]], np.int32))
  leaked = False
  for lvl, (a, b, c) in enumerate(zip(f_small, f_big, f_unmasked)):
    h, w = a.shape[1:3]
    scale = float(np.abs(a).max())
    np.testing.assert_allclose(np.asarray(b)[:, :h, :w], a, rtol=0,
                               atol=1e-5 * scale, err_msg=f'P{lvl + 2}')
    leaked |= np.abs(np.asarray(c)[:, :h, :w] - a).max() > 1e-3 * scale
  assert leaked, 'without masking the canvas padding should leak in'
