"""Tests for maskrcnn_jax.visualize."""

import json

import numpy as np
import pycocotools.mask as mask_util

from maskrcnn_jax import visualize

CLASS_NAMES = ('person', 'bicycle', 'car')


def _scene():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
  boxes = np.array([[10.5, 20.25, 70.0, 90.0],
                    [80.0, 30.0, 150.0, 110.0],
                    [5.0, 100.0, 15.0, 110.0]], np.float32)
  scores = np.array([0.9, 0.6, 0.1], np.float32)
  labels = np.array([0, 2, 1], np.int64)
  masks = np.zeros((3, 120, 160), bool)
  masks[0, 40:80, 20:60] = True
  masks[1, 50:100, 90:140] = True
  masks[2, 101:109, 6:14] = True
  return image, boxes, scores, labels, masks


def test_draw_shapes_and_mask_region():
  image, boxes, scores, labels, masks = _scene()
  orig = image.copy()
  out = visualize.draw_detections(image, boxes, scores, labels, masks,
                                  CLASS_NAMES, score_thr=0.3)
  assert out.shape == image.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(image, orig)  # input left untouched
  assert out is not image
  changed = np.any(out != orig, axis=-1)
  # Interior of the drawn masks (away from outlines/captions) is tinted.
  assert changed[50:70, 30:50].mean() > 0.95
  assert changed[65:90, 100:130].mean() > 0.95
  # The low-score detection (below score_thr) is not drawn.
  assert not changed[102:108, 7:13].any()
  # Far from every detection the image is unchanged.
  assert not changed[114:, 154:].any()


def test_draw_deterministic_and_box_only():
  image, boxes, scores, labels, masks = _scene()
  a = visualize.draw_detections(image, boxes, scores, labels, masks,
                                CLASS_NAMES)
  b = visualize.draw_detections(image, boxes, scores, labels, masks,
                                CLASS_NAMES)
  np.testing.assert_array_equal(a, b)
  c = visualize.draw_detections(image, boxes, scores, labels, None,
                                CLASS_NAMES)
  assert c.shape == image.shape and c.dtype == np.uint8
  changed = np.any(c != image, axis=-1)
  assert changed.any()
  assert not changed[50:70, 30:50].any()  # no mask fill without masks
  assert visualize.label_color(3) == visualize.label_color(3)
  assert visualize.label_color(0) != visualize.label_color(1)


def test_draw_zero_detections():
  image = _scene()[0]
  out = visualize.draw_detections(
      image, np.zeros((0, 4), np.float32), np.zeros((0,), np.float32),
      np.zeros((0,), np.int64), np.zeros((0, 120, 160), bool), CLASS_NAMES)
  assert out.shape == image.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(out, image)
  assert out is not image


def test_detections_to_records():
  _, boxes, scores, labels, masks = _scene()
  recs = visualize.detections_to_records('img.png', boxes, scores, labels,
                                         masks, CLASS_NAMES)
  assert len(recs) == 3
  json.dumps(recs)  # JSON-serialisable
  r = recs[0]
  assert set(r) == {'file_name', 'bbox', 'score', 'label', 'category',
                    'segmentation'}
  assert r['file_name'] == 'img.png'
  assert all(isinstance(v, float) for v in r['bbox'])
  np.testing.assert_allclose(r['bbox'], [10.5, 20.25, 59.5, 69.75])
  np.testing.assert_allclose(recs[1]['bbox'], [80.0, 30.0, 70.0, 80.0])
  np.testing.assert_allclose(recs[2]['bbox'], [5.0, 100.0, 10.0, 10.0])
  assert isinstance(r['score'], float) and abs(r['score'] - 0.9) < 1e-6
  assert [x['label'] for x in recs] == [0, 2, 1]
  assert all(isinstance(x['label'], int) for x in recs)
  assert [x['category'] for x in recs] == ['person', 'car', 'bicycle']
  for rec, m in zip(recs, masks):
    seg = rec['segmentation']
    assert seg['size'] == [120, 160] and isinstance(seg['counts'], str)
    dec = mask_util.decode({'size': seg['size'],
                            'counts': seg['counts'].encode()})
    np.testing.assert_array_equal(dec.astype(bool), m)


def test_detections_to_records_empty_and_no_masks():
  assert visualize.detections_to_records(
      'a.png', np.zeros((0, 4)), np.zeros(0), np.zeros(0, int),
      np.zeros((0, 5, 5), bool), CLASS_NAMES) == []
  _, boxes, scores, labels, _ = _scene()
  recs = visualize.detections_to_records('a.png', boxes, scores, labels, None,
                                         CLASS_NAMES)
  assert len(recs) == 3 and 'segmentation' not in recs[0]


def test_draw_without_scores_for_ground_truth():
  image, boxes, scores, labels, masks = _scene()
  with_scores = visualize.draw_detections(image, boxes, scores, labels, masks,
                                          CLASS_NAMES, score_thr=0.3)
  names_only = visualize.draw_detections(image, boxes, scores, labels, masks,
                                         CLASS_NAMES, score_thr=0.3,
                                         show_scores=False)
  changed = np.any(with_scores != names_only, axis=-1)
  assert changed.any()  # shorter captions
  # Masks away from the captions are drawn the same.
  assert not changed[50:70, 30:50].any()
