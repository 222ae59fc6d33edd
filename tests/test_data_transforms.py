"""Tests for maskrcnn_jax.data.transforms (training pipeline, compact masks)."""

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest

from maskrcnn_jax import config as config_lib
from maskrcnn_jax import preprocess
from maskrcnn_jax.data import coco
from maskrcnn_jax.data import transforms as T

FIXTURE = '/work/shared/fixtures/train/coco'


@pytest.fixture(scope='module')
def fixture_data():
  ds = coco.load_coco(f'{FIXTURE}/annotations.json', f'{FIXTURE}/images',
                      train=True)
  return [(r, coco.load_image(r)) for r in ds.records]


def _bilinear(img, y, x):
  """mmcv roi_align's bilinear_interpolate (zero outside [-1, size])."""
  h, w = img.shape
  out = (y < -1) | (y > h) | (x < -1) | (x > w)
  y, x = np.maximum(y, 0), np.maximum(x, 0)
  yl, xl = np.floor(y).astype(int), np.floor(x).astype(int)
  cy, cx = yl >= h - 1, xl >= w - 1
  yl, xl = np.where(cy, h - 1, yl), np.where(cx, w - 1, xl)
  yh, xh = np.where(cy, h - 1, yl + 1), np.where(cx, w - 1, xl + 1)
  y, x = np.where(cy, yl, y), np.where(cx, xl, x)
  ly, lx = y - yl, x - xl
  v = ((1 - ly) * (1 - lx) * img[yl, xl] + (1 - ly) * lx * img[yl, xh]
       + ly * (1 - lx) * img[yh, xl] + ly * lx * img[yh, xh])
  return np.where(out, 0.0, v)


def _roi_align_target(bitmap, roi, out=28):
  """MMDetection bitmap mask target: roi_align(aligned=True, sampling 0)."""
  x1, y1, x2, y2 = roi
  bw, bh = (x2 - x1) / out, (y2 - y1) / out
  gw, gh = max(int(np.ceil(bw)), 1), max(int(np.ceil(bh)), 1)
  ys = y1 - 0.5 + np.arange(out)[:, None] * bh + (np.arange(gh) + 0.5) * bh / gh
  xs = x1 - 0.5 + np.arange(out)[:, None] * bw + (np.arange(gw) + 0.5) * bw / gw
  shape = (out, out, gh, gw)
  v = _bilinear(bitmap.astype(np.float64),
                np.broadcast_to(ys[:, None, :, None], shape),
                np.broadcast_to(xs[None, :, None, :], shape))
  return (v.mean(axis=(2, 3)) >= 0.5).astype(np.float32)


def _mmdet_bitmap(record, k, new_hw, flip):
  """MMDetection BitmapMasks: poly2mask, nearest rescale, flip."""
  m = coco.segmentation_to_bitmap(record.masks[k], record.height, record.width)
  m = cv2.resize(m, (int(new_hw[1]), int(new_hw[0])),
                 interpolation=cv2.INTER_NEAREST)
  return m[:, ::-1] if flip else m


def test_from_config_and_spec():
  c = config_lib.base_config()
  cfg = T.TransformConfig.from_config(c)
  assert (cfg.scale_mode, cfg.scales, cfg.flip_prob) == (
      'fixed', ((1333, 800),), 0.5)
  assert cfg.canvases == ((800, 1344), (1344, 800))
  ev = T.TransformConfig.from_config(c, train=False)
  assert ev.flip_prob == 0 and not ev.with_masks
  config_lib.set_train_scales(c, 'range')
  assert T.TransformConfig.from_config(c).scale_mode == 'range'
  with pytest.raises(ValueError, match='scale_mode'):
    T.TransformConfig(scale_mode='bogus')
  assert T.canvas_for(480, 640, cfg) == (800, 1344)
  assert T.canvas_for(640, 480, cfg) == (1344, 800)
  assert T.canvas_for(500, 500, cfg) == (800, 1344)  # square: landscape


def test_fixed_resize_matches_test_preprocessing(fixture_data):
  cfg = T.TransformConfig(flip_prob=0.0)
  for record, image in fixture_data:
    ex = T.train_transform(record, image, np.random.default_rng(0), cfg)
    prep = preprocess.prepare_image(image, (1333, 800), cfg.canvases)
    np.testing.assert_array_equal(ex['image'], prep.canvas)
    assert tuple(ex['image_hw']) == prep.image_hw
    assert tuple(ex['pad_hw']) == prep.pad_hw
    assert tuple(ex['ori_hw']) == prep.ori_hw
    np.testing.assert_allclose(ex['scale_factor'], prep.scale_factor,
                               rtol=1e-6)
    n = record.num_instances
    sf = ex['scale_factor']
    want = record.boxes * np.array([sf[0], sf[1], sf[0], sf[1]], np.float32)
    want[:, 0::2] = np.clip(want[:, 0::2], 0, prep.image_hw[1])
    want[:, 1::2] = np.clip(want[:, 1::2], 0, prep.image_hw[0])
    np.testing.assert_array_equal(ex['gt_boxes'][:n], want)
    assert ex['gt_valid'].sum() == n and not ex['gt_valid'][n:].any()
    assert (ex['gt_labels'][:n] == record.labels).all()
    assert (ex['gt_labels'][n:] == -1).all()
    spec = T.example_spec(cfg)
    assert set(spec) == set(ex)
    for k, (shape, dtype) in spec.items():
      assert ex[k].dtype == dtype, k
      if None not in shape:
        assert ex[k].shape == shape, k


def test_flip_boxes_image_and_masks(fixture_data):
  record, image = fixture_data[0]
  plain = T.train_transform(record, image, np.random.default_rng(0),
                            T.TransformConfig(flip_prob=0.0))
  flip = T.train_transform(record, image, np.random.default_rng(0),
                           T.TransformConfig(flip_prob=1.0))
  assert flip['flip'] and not plain['flip']
  h, w = plain['image_hw']
  np.testing.assert_array_equal(flip['image'][:h, :w],
                                plain['image'][:h, :w][:, ::-1])
  assert not flip['image'][h:].any() and not flip['image'][:, w:].any()
  n = record.num_instances
  pb, fb = plain['gt_boxes'][:n], flip['gt_boxes'][:n]
  np.testing.assert_array_equal(fb[:, 0], np.float32(w) - pb[:, 2])
  np.testing.assert_array_equal(fb[:, 2], np.float32(w) - pb[:, 0])
  np.testing.assert_array_equal(fb[:, 1::2], pb[:, 1::2])
  # Compact masks over mirrored boxes are mirrored (up to rounding).
  diff = np.abs(flip['gt_masks'][:n].astype(int)
                - plain['gt_masks'][:n, :, ::-1].astype(int))
  assert diff.max() <= 2


@pytest.mark.parametrize('flip', [False, True])
def test_compact_bitmap_masks_match_mmdet_bitmaps(fixture_data, flip):
  cfg = T.TransformConfig(flip_prob=float(flip))
  rng = np.random.default_rng(1)
  agree = []
  for record, image in fixture_data:
    ex = T.train_transform(record, image, np.random.default_rng(0), cfg)
    hw = ex['image_hw']
    for k in range(record.num_instances):
      full = _mmdet_bitmap(record, k, hw, flip)
      box = ex['gt_boxes'][k]
      # Re-expanded compact vs the full-resolution transformed bitmap.
      pasted = T.paste_compact(ex['gt_masks'][k], box, hw) >= 0.5
      iou = (pasted & (full > 0)).sum() / (pasted | (full > 0)).sum()
      assert iou > 0.98, (record.file_name, k, iou)
      # 28x28 targets of jittered RoIs vs MMDetection's roi_align targets.
      bw, bh = box[2] - box[0], box[3] - box[1]
      rois = box + rng.normal(0, 0.15, (4, 4)) * [bw, bh, bw, bh]
      rois[:, 2:] = np.maximum(rois[:, 2:], rois[:, :2] + 2)
      ours = T.crop_and_resize_to_roi(ex['gt_masks'][k], box, rois,
                                      clip_hw=hw)
      rois[:, 0::2] = np.clip(rois[:, 0::2], 0, hw[1])
      rois[:, 1::2] = np.clip(rois[:, 1::2], 0, hw[0])
      ref = np.stack([_roi_align_target(full, r) for r in rois])
      agree.append((ours == ref).mean(axis=(1, 2)))
  agree = np.concatenate(agree)
  assert agree.min() > 0.98 and agree.mean() > 0.995, agree


def test_area_weights_and_crop_bitmap():
  w = T.area_weights(2.0, 10.0, 4, 0.0, 1.0, 12)
  np.testing.assert_allclose(w.sum(1), 1.0)
  np.testing.assert_allclose(w[0, 2:4], [1.0 / 2, 1.0 / 2])
  mask = np.zeros((20, 30), np.uint8)
  mask[5:15, 10:20] = 1
  c = T.crop_bitmap(mask, (10, 5, 20, 15), 8)
  assert (c == 255).all()
  c = T.crop_bitmap(mask, (5, 5, 20, 15), 6)  # left third empty
  np.testing.assert_array_equal(c[:, :2], 0)
  np.testing.assert_array_equal(c[:, 2:], 255)
  t = T.crop_and_resize_to_roi(c, (5, 5, 20, 15), [[0, 0, 30, 20]], 10)
  pooled = mask.reshape(10, 2, 10, 3).mean(axis=(1, 3)) >= 0.5
  np.testing.assert_array_equal(t[0], pooled)


def test_polygon_mode(fixture_data):
  cfg = T.TransformConfig(mask_format='polygon', flip_prob=1.0,
                          max_polygon_vertices=64)
  record, image = fixture_data[1]
  ex = T.train_transform(record, image, np.random.default_rng(0), cfg)
  w_new = int(ex['image_hw'][1])
  sf = ex['scale_factor'].astype(np.float64)
  polys = T.polygons_from_padded(ex['gt_polygons'], ex['gt_polygon_ids'])
  for k in range(record.num_instances):
    want = []
    for p in record.masks[k]:  # MMDetection PolygonMasks rescale + flip
      q = p.copy()
      q[0::2] = w_new - q[0::2] * sf[0]
      q[1::2] = q[1::2] * sf[1]
      want.append(q)
    assert len(polys[k]) == len(want)
    for a, b in zip(polys[k], want):
      np.testing.assert_allclose(a, b, atol=1e-4)
    box = ex['gt_boxes'][k]
    np.testing.assert_array_equal(
        ex['gt_masks'][k],
        T.rasterize_polygons(want, box, cfg.mask_crop, mmdet_guard=False) * 255)
    # MMDetection polygon targets from the padded polygons.
    roi = box + np.array([-3.0, 2.0, 4.0, -1.0])
    tgt = T.polygon_targets(polys[k], roi[None])[0]
    shifted = [np.array(q) for q in want]
    for q in shifted:
      q[0::2] = (q[0::2] - roi[0]) * 28 / max(roi[2] - roi[0], 1)
      q[1::2] = (q[1::2] - roi[1]) * 28 / max(roi[3] - roi[1], 1)
    ref = mask_util.decode(mask_util.merge(
        mask_util.frPyObjects(shifted, 28, 28)))
    assert (tgt != ref).sum() <= 2
  assert not ex['gt_polygon_ids'][record.num_instances:].max() >= 0


def test_polygon_mode_ignores_rle_and_simplifies():
  h, w = 60, 80
  m = np.zeros((h, w), np.uint8)
  m[10:30, 10:50] = 1
  rle = mask_util.encode(np.asfortranarray(m))
  t = np.linspace(0, 2 * np.pi, 200, endpoint=False)
  circle = np.stack([40 + 15 * np.cos(t), 30 + 15 * np.sin(t)], 1).reshape(-1)
  record = coco.CocoRecord(
      index=0, image_id=1, file_name='x', image_path='', height=h, width=w,
      boxes=np.array([[10, 10, 50, 30], [25, 15, 55, 45]], np.float32),
      labels=np.array([1, 2], np.int32), ann_ids=np.array([1, 2]),
      masks=({'size': [h, w], 'counts': rle['counts']}, [circle]),
      ignored_boxes=np.zeros((0, 4), np.float32),
      ignored_labels=np.zeros((0,), np.int32),
      ignored_ann_ids=np.zeros((0,), np.int64))
  image = np.zeros((h, w, 3), np.uint8)
  cfg = T.TransformConfig(mask_format='polygon', scales=((80, 60),),
                          canvases=((64, 96),), max_polygon_vertices=32,
                          flip_prob=0.0, mask_crop=32)
  ex = T.train_transform(record, image, np.random.default_rng(0), cfg)
  assert ex['gt_labels'][:2].tolist() == [2, -1]       # RLE -> ignored
  assert ex['gt_ignored_labels'][:1].tolist() == [1]
  ids = ex['gt_polygon_ids'][0]
  assert 3 <= (ids >= 0).sum() <= 32
  simple = T.polygons_from_padded(ex['gt_polygons'], ex['gt_polygon_ids'])[0]
  a = T.rasterize_polygons(simple, (0, 0, w, h), 64)
  b = T.rasterize_polygons([circle], (0, 0, w, h), 64)
  assert (a & b).sum() / (a | b).sum() > 0.95
  # Bitmap recipes keep the RLE instance.
  cfg_b = T.TransformConfig(scales=((80, 60),), canvases=((64, 96),),
                            flip_prob=0.0, mask_crop=32)
  ex = T.train_transform(record, image, np.random.default_rng(0), cfg_b)
  assert ex['gt_labels'][:2].tolist() == [1, 2]
  assert (ex['gt_masks'][0] == 255).all()


def test_max_instances_and_ignored_truncation():
  n = 7
  boxes = np.array([[i, i, i + 10, i + 10] for i in range(n)], np.float32)
  record = coco.CocoRecord(
      index=0, image_id=1, file_name='x', image_path='', height=40, width=40,
      boxes=boxes, labels=np.arange(n, dtype=np.int32),
      ann_ids=np.arange(n), masks=tuple([[b[[0, 1, 2, 1, 2, 3, 0, 3]].astype(
          np.float64)] for b in boxes]),
      ignored_boxes=boxes[:5], ignored_labels=np.arange(5, dtype=np.int32),
      ignored_ann_ids=np.arange(5))
  cfg = T.TransformConfig(scales=((40, 40),), canvases=((64, 64),),
                          max_instances=4, max_ignored=2, mask_crop=8,
                          flip_prob=0.0)
  ex = T.train_transform(record, np.zeros((40, 40, 3), np.uint8),
                         np.random.default_rng(0), cfg)
  assert ex['gt_labels'].tolist() == [0, 1, 2, 3]   # the first ones
  assert int(ex['gt_num_dropped']) == 3
  assert ex['gt_ignored_labels'].tolist() == [0, 1]
  assert ex['gt_masks'].shape == (4, 8, 8) and (ex['gt_masks'] == 255).all()
  with pytest.raises(ValueError, match='annotations say'):
    T.train_transform(record, np.zeros((30, 40, 3), np.uint8),
                      np.random.default_rng(0), cfg)


def test_scale_modes_and_determinism(fixture_data):
  rng = np.random.default_rng(0)
  rcfg = T.TransformConfig(scale_mode='range',
                           scales=((1333, 640), (1333, 800)))
  shorts = [T.sample_scale(rcfg, rng) for _ in range(2000)]
  assert {s[0] for s in shorts} == {1333}
  assert min(s[1] for s in shorts) == 640 and max(s[1] for s in shorts) == 800
  ccfg = T.TransformConfig(scale_mode='choice', scales=tuple(
      (1333, s) for s in config_lib.MS_CHOICE_SHORT_SIDES))
  assert {T.sample_scale(ccfg, rng)[1] for _ in range(200)} == set(
      config_lib.MS_CHOICE_SHORT_SIDES)

  record, image = fixture_data[1]
  a = T.train_transform(record, image, np.random.default_rng(5), rcfg)
  b = T.train_transform(record, image, np.random.default_rng(5), rcfg)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  # The drawn short side is applied exactly as mmcv's keep-ratio rescale.
  r = np.random.default_rng(5)
  scale = T.sample_scale(rcfg, r)
  flip = r.random() < 0.5
  assert tuple(a['image_hw']) == preprocess.rescale_size(
      (record.height, record.width), scale)
  assert bool(a['flip']) == flip
  assert a['image'].shape == (1344, 800, 3)  # portrait canvas
  sizes = {tuple(T.train_transform(record, image, np.random.default_rng(s),
                                   rcfg)['image_hw']) for s in range(4)}
  assert len(sizes) > 1
