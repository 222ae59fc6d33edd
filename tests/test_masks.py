"""Tests for maskrcnn_jax.masks against a PyTorch port of MMDetection's
`_do_paste_mask` (CPU, skip_empty=True) and the MMDetection fixtures."""

import glob
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest

from maskrcnn_jax import masks as mask_ops

torch = pytest.importorskip('torch')
F = torch.nn.functional

FIXTURE_DIR = '/work/shared/fixtures/ref'
# PyTorch's vectorised grid_sample kernel (AVX2 / AVX-512) uses FMAs, which
# `paste_masks` emulates exactly; a non-FMA build may differ by an ulp.
_TORCH_HAS_FMA = torch.backends.cpu.get_cpu_capability() in (
    'AVX2', 'AVX512', 'ZVECTOR', 'SVE256')


def _torch_paste_one(mask, box, img_h, img_w):
  """MMDetection 3.3.0 `_do_paste_mask` for one mask on CPU (skip_empty)."""
  masks = torch.from_numpy(np.asarray(mask, np.float32))[None, None]
  boxes = torch.from_numpy(np.asarray(box, np.float32))[None]
  x0_int, y0_int = torch.clamp(
      boxes.min(dim=0).values.floor()[:2] - 1, min=0).to(dtype=torch.int32)
  x1_int = torch.clamp(
      boxes[:, 2].max().ceil() + 1, max=img_w).to(dtype=torch.int32)
  y1_int = torch.clamp(
      boxes[:, 3].max().ceil() + 1, max=img_h).to(dtype=torch.int32)
  x0_int, y0_int, x1_int, y1_int = (
      int(v) for v in (x0_int, y0_int, x1_int, y1_int))
  # torch.arange raises when the box lies wholly left of / above the image.
  x1_int, y1_int = max(x1_int, x0_int), max(y1_int, y0_int)
  spatial = (slice(y0_int, y1_int), slice(x0_int, x1_int))
  if x1_int == x0_int or y1_int == y0_int:
    return np.zeros((y1_int - y0_int, x1_int - x0_int), np.float32), spatial
  x0, y0, x1, y1 = torch.split(boxes, 1, dim=1)
  n = masks.shape[0]
  img_y = torch.arange(y0_int, y1_int).to(torch.float32) + 0.5
  img_x = torch.arange(x0_int, x1_int).to(torch.float32) + 0.5
  img_y = (img_y - y0) / (y1 - y0) * 2 - 1
  img_x = (img_x - x0) / (x1 - x0) * 2 - 1
  if torch.isinf(img_x).any():
    img_x[torch.where(torch.isinf(img_x))] = 0
  if torch.isinf(img_y).any():
    img_y[torch.where(torch.isinf(img_y))] = 0
  gx = img_x[:, None, :].expand(n, img_y.size(1), img_x.size(1))
  gy = img_y[:, :, None].expand(n, img_y.size(1), img_x.size(1))
  grid = torch.stack([gx, gy], dim=3)
  img_masks = F.grid_sample(
      masks.to(dtype=torch.float32), grid, align_corners=False)
  return img_masks[0, 0].numpy(), spatial


def _torch_paste(mask_probs, boxes, img_h, img_w, threshold=0.5):
  out = np.zeros((len(boxes), img_h, img_w), bool)
  for i, (m, b) in enumerate(zip(mask_probs, boxes)):
    probs, spatial = _torch_paste_one(m, b, img_h, img_w)
    out[(i,) + spatial] = probs >= threshold
  return out


def _random_probs(rng, n):
  kinds = [
      lambda: rng.random((28, 28), dtype=np.float32),
      lambda: (1 / (1 + np.exp(-rng.normal(0, 4, (28, 28))))).astype(
          np.float32),
      lambda: np.full((28, 28), 1.0, np.float32),  # all ones
      lambda: (rng.integers(0, 3, (28, 28)) * 0.5).astype(np.float32),
  ]
  return np.stack([kinds[i % len(kinds)]() for i in range(n)])


def _edge_boxes(rng, img_h, img_w, n):
  """Random boxes: normal, partly outside, tiny, degenerate, integral."""
  boxes = []
  for i in range(n):
    kind = i % 7
    cx, cy = rng.uniform(-0.2, 1.2) * img_w, rng.uniform(-0.2, 1.2) * img_h
    if kind == 0:  # ordinary
      w, h = rng.uniform(1, img_w / 2), rng.uniform(1, img_h / 2)
    elif kind == 1:  # tiny, below one pixel
      w, h = rng.uniform(0, 1, 2)
    elif kind == 2:  # x1 == x2
      w, h = 0.0, rng.uniform(0, img_h / 3)
    elif kind == 3:  # y1 == y2
      w, h = rng.uniform(0, img_w / 3), 0.0
    elif kind == 4:  # point box
      w, h = 0.0, 0.0
    elif kind == 5:  # larger than the image
      cx, cy = img_w / 2, img_h / 2
      w, h = rng.uniform(1, 2) * img_w, rng.uniform(1, 2) * img_h
    else:  # integral / half-integral coordinates
      cx, cy = np.round(cx * 2) / 2, np.round(cy * 2) / 2
      w, h = float(rng.integers(0, 60)), float(rng.integers(0, 60)) / 2
    boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
  return np.asarray(boxes, np.float32)


@pytest.mark.parametrize('img_hw,n,seed', [
    ((480, 640), 140, 0),
    ((37, 23), 70, 1),
    ((1100, 1600), 14, 2),
])
def test_paste_matches_torch(img_hw, n, seed):
  rng = np.random.default_rng(seed)
  img_h, img_w = img_hw
  probs = _random_probs(rng, n)
  boxes = _edge_boxes(rng, img_h, img_w, n)
  got = mask_ops.paste_masks(probs, boxes, img_hw)
  want = _torch_paste(probs, boxes, img_h, img_w)
  assert got.shape == (n, img_h, img_w) and got.dtype == np.bool_
  num_diff = int((got != want).sum())
  # With FMA emulation the output is bit-identical (measured: 0 pixels).
  assert num_diff <= (0 if _TORCH_HAS_FMA else 20), num_diff
  assert want.any()  # the test exercises something


def test_paste_window_probs_bitwise():
  """The resampled float probabilities (pre-threshold) match bit for bit."""
  rng = np.random.default_rng(3)
  img_h, img_w = 300, 400
  probs = _random_probs(rng, 42)
  boxes = _edge_boxes(rng, img_h, img_w, 42)
  for m, b in zip(probs, boxes):
    got, rows, cols = mask_ops._paste_one(m, b, img_h, img_w)  # pylint: disable=protected-access
    want, spatial = _torch_paste_one(m, b, img_h, img_w)
    assert (rows, cols) == spatial
    assert got.shape == want.shape and got.dtype == np.float32
    if _TORCH_HAS_FMA:
      np.testing.assert_array_equal(got, want)
    else:
      np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_paste_threshold_and_simple_geometry():
  probs = np.ones((1, 28, 28), np.float32)
  boxes = np.array([[10, 20, 30, 50]], np.float32)
  m = mask_ops.paste_masks(probs, boxes, (64, 64))[0]
  # Pixel centres strictly inside the box are set; outside stays clear.
  assert m[20:50, 10:30].all()
  assert m.sum() == 20 * 30
  # A threshold above every probability gives empty masks.
  assert not mask_ops.paste_masks(probs * 0.4, boxes, (64, 64)).any()


def test_paste_empty():
  out = mask_ops.paste_masks(
      np.zeros((0, 28, 28), np.float32), np.zeros((0, 4), np.float32),
      (17, 19))
  assert out.shape == (0, 17, 19) and out.dtype == np.bool_
  assert mask_ops.encode_rle(out) == []


_FIXTURES = sorted(glob.glob(os.path.join(FIXTURE_DIR, '*.npz')))


@pytest.mark.skipif(len(_FIXTURES) != 6, reason='reference fixtures missing')
@pytest.mark.parametrize('npz_path', _FIXTURES,
                         ids=[os.path.basename(p)[:-4] for p in _FIXTURES])
def test_paste_reproduces_mmdet_fixtures(npz_path):
  ref = np.load(npz_path)
  with open(npz_path[:-4] + '.json') as f:
    meta = json.load(f)
  logits = ref['tf_mask_logits'].astype(np.float32)
  probs = (1 / (1 + np.exp(-logits))).astype(np.float32)
  got = mask_ops.paste_masks(probs, ref['det_bboxes'], meta['ori_shape'])
  want = mask_ops.decode_rle(meta['det_masks_rle'])
  assert got.shape == want.shape == (meta['num_dets'], *meta['ori_shape'])
  ious = mask_ops.mask_iou(got, want)
  assert ious.min() > 0.99, (ious.min(), int(ious.argmin()))
  # Measured: identical masks (0 differing pixels) on all six fixtures.
  assert int((got != want).sum()) <= 10
  # And the RLE strings themselves round-trip to MMDetection's.
  rles = mask_ops.encode_rle(got)
  same = [a['counts'] == b['counts'] for a, b in zip(rles,
                                                     meta['det_masks_rle'])]
  assert np.mean(same) > 0.99


def test_encode_rle_round_trip():
  rng = np.random.default_rng(4)
  masks = rng.random((5, 31, 47)) > 0.6
  masks[2] = False
  masks[3] = True
  rles = mask_ops.encode_rle(masks)
  assert len(rles) == 5
  for m, rle in zip(masks, rles):
    assert rle['size'] == [31, 47]
    assert isinstance(rle['counts'], str)
    # Same encoding as MMDetection's `encode_mask_results`.
    ref = mask_util.encode(np.array(m[:, :, None], order='F', dtype='uint8'))[0]
    assert rle['counts'] == ref['counts'].decode()
    dec = mask_util.decode({'size': rle['size'],
                            'counts': rle['counts'].encode()})
    np.testing.assert_array_equal(dec.astype(bool), m)
  np.testing.assert_array_equal(mask_ops.decode_rle(rles), masks)


def test_mask_iou():
  a = np.zeros((3, 4, 4), bool)
  b = np.zeros((3, 4, 4), bool)
  a[0, :2] = True
  b[0, 1:3] = True  # inter 4, union 12
  a[1] = True
  b[1] = True
  np.testing.assert_allclose(mask_ops.mask_iou(a, b), [4 / 12, 1.0, 1.0])
  assert mask_ops.mask_iou(a[0], b[0]) == pytest.approx(1 / 3)
