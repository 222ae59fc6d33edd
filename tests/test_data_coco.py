"""Tests for maskrcnn_jax.data.coco (the COCO-format reader)."""

import copy
import json
import os
import pickle

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest

from maskrcnn_jax.data import coco
from maskrcnn_jax.data import coco_classes

FIXTURE = '/work/shared/fixtures/train/coco'
SQUARE = [10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]


def _ann(aid, image_id=1, cat=7, bbox=(10.0, 10.0, 20.0, 20.0), seg=None,
         area=400.0, **kw):
  a = dict(id=aid, image_id=image_id, category_id=cat, bbox=list(bbox),
           area=area, iscrowd=0,
           segmentation=[list(SQUARE)] if seg is None else seg)
  a.update(kw)
  return a


def _base():
  """Two images, category ids with gaps (3, 7, 20)."""
  return dict(
      images=[dict(id=1, file_name='a.png', height=48, width=64),
              dict(id=2, file_name='b.png', height=64, width=40)],
      categories=[dict(id=20, name='zebra'), dict(id=3, name='cat'),
                  dict(id=7, name='dog')],
      annotations=[_ann(1, cat=20), _ann(2, image_id=2, cat=3)])


def _write(tmp_path, data, images=True):
  img_dir = tmp_path / 'images'
  img_dir.mkdir(exist_ok=True)
  if images:
    for im in data['images']:
      path = img_dir / im['file_name']
      if not path.exists():
        cv2.imwrite(str(path), np.full((im['height'], im['width'], 3), 100,
                                       np.uint8))
  ann = tmp_path / 'ann.json'
  ann.write_text(json.dumps(data))
  return str(ann), str(img_dir)


def _load(tmp_path, data, train=True, **kw):
  ann, img = _write(tmp_path, data)
  return coco.load_coco(ann, img, train=train, **kw)


def test_fixture_loads_with_its_classes():
  ds = coco.load_coco(f'{FIXTURE}/annotations.json', f'{FIXTURE}/images',
                      train=True)
  raw = json.load(open(f'{FIXTURE}/annotations.json'))
  assert len(ds) == 2 and ds.class_names == coco_classes.COCO_CLASSES
  assert ds.cat_ids == tuple(sorted(c['id'] for c in raw['categories']))
  r = ds.records[0]
  anns = [a for a in raw['annotations'] if a['image_id'] == r.image_id]
  assert r.num_instances == len(anns) == 7
  for k, a in enumerate(anns):
    x, y, w, h = a['bbox']
    np.testing.assert_array_equal(
        r.boxes[k], np.array([x, y, x + w, y + h], np.float32))
    assert ds.cat_ids[r.labels[k]] == a['category_id']
    assert ds.class_names[r.labels[k]] == coco_classes.COCO_CLASSES[
        sorted(c['id'] for c in raw['categories']).index(a['category_id'])]
    assert r.masks[k][0].dtype == np.float64
    np.testing.assert_array_equal(r.masks[k][0], a['segmentation'][0])
  assert coco.load_image(r).shape == (480, 640, 3)
  assert sum(ds.skipped.values()) == 0


def test_label_mapping_with_gaps_and_names(tmp_path):
  ds = _load(tmp_path, _base())
  assert ds.cat_ids == (3, 7, 20)
  assert ds.class_names == ('cat', 'dog', 'zebra')
  assert ds.records[0].labels.tolist() == [2]
  assert ds.records[1].labels.tolist() == [0]
  assert ds.records[0].boxes.dtype == np.float32
  assert ds.records[1].is_portrait and not ds.records[0].is_portrait
  # Pickles compactly (worker processes) and identically.
  ds2 = pickle.loads(pickle.dumps(ds))
  assert ds2.records[0].boxes.tolist() == ds.records[0].boxes.tolist()


def test_crowd_and_rle(tmp_path):
  data = _base()
  crowd_mask = np.zeros((48, 64), np.uint8)
  crowd_mask[5:20, 5:40] = 1
  flat = crowd_mask.reshape(-1, order='F')
  runs = np.diff(np.concatenate(
      [[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])).tolist()
  data['annotations'] += [
      _ann(3, cat=3, iscrowd=1, bbox=(5, 5, 35, 15),
           seg={'size': [48, 64], 'counts': runs}),
      _ann(4, cat=7, seg={'size': [48, 64], 'counts': runs}),
      _ann(5, cat=7, seg=mask_util.encode(np.asfortranarray(crowd_mask)) | {
          'counts': mask_util.encode(np.asfortranarray(crowd_mask))[
              'counts'].decode()}),
  ]
  ds = _load(tmp_path, data)
  r = ds.records[0]
  assert r.ann_ids.tolist() == [1, 4, 5]
  assert r.ignored_ann_ids.tolist() == [3]
  np.testing.assert_array_equal(r.ignored_boxes, [[5, 5, 40, 20]])
  assert r.ignored_labels.tolist() == [0]
  for k in (1, 2):
    assert isinstance(r.masks[k], dict)
    np.testing.assert_array_equal(
        coco.segmentation_to_bitmap(r.masks[k], 48, 64), crowd_mask)
  assert ds.stats()['rle_instances'] == 2 and ds.num_rle().tolist() == [2, 0]


def test_skip_rules_are_counted(tmp_path, caplog):
  data = _base()
  data['annotations'] += [
      _ann(10, ignore=1),                               # ignore flag
      _ann(11, bbox=(70, 10, 5, 5)),                    # outside the image
      _ann(12, area=0.0),                               # area <= 0
      _ann(13, bbox=(10, 10, 0.5, 20)),                 # w < 1
      _ann(14, bbox=(10, 10, 20, 0.9)),                 # h < 1
      _ann(15, seg=[[1.0, 2.0, 3.0, 4.0]]),             # < 6 coords: ignore
      _ann(16, seg=[[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]]),  # odd: ignore
      _ann(17, seg=[[1.0, 2.0, 3.0, 4.0], list(SQUARE)]),   # one dropped
  ]
  with caplog.at_level('WARNING'):
    ds = _load(tmp_path, data)
  s = ds.skipped
  assert (s['ignore_flag'], s['no_overlap'], s['zero_area'],
          s['too_thin']) == (1, 1, 1, 2)
  assert s['invalid_polygon'] == 2 and s['dropped_polygons'] == 3
  r = ds.records[0]
  assert r.ann_ids.tolist() == [1, 17]
  assert len(r.masks[1]) == 1 and r.masks[1][0].tolist() == SQUARE
  assert r.ignored_ann_ids.tolist() == [15, 16]  # flagged ignore (mmdet)
  warnings = [m for m in caplog.messages if 'skipped' in m]
  assert len(warnings) == 1 and 'too_thin=2' in warnings[0]


def test_train_filter_and_val_keeps_all(tmp_path):
  data = _base()
  data['images'] += [dict(id=3, file_name='c.png', height=48, width=64),
                     dict(id=4, file_name='d.png', height=31, width=64),
                     dict(id=5, file_name='e.png', height=48, width=64)]
  data['annotations'] += [
      _ann(20, image_id=4, bbox=(1, 1, 10, 10)),
      # Only a crowd annotation: kept by MMDetection's filter (no GT).
      _ann(21, image_id=5, iscrowd=1)]
  train = _load(tmp_path, data, train=True)
  assert train.image_ids.tolist() == [1, 2, 5]
  assert train.skipped['images_without_annotations'] == 1
  assert train.skipped['images_too_small'] == 1
  assert train.stats()['images_without_gt'] == 1
  val = _load(tmp_path, data, train=False)
  assert val.image_ids.tolist() == [1, 2, 3, 4, 5]
  assert val.records[2].num_instances == 0


def _expect_error(tmp_path, data, *needles, exc=coco.CocoFormatError,
                  train=True):
  with pytest.raises(exc) as e:
    _load(tmp_path, data, train=train)
  msg = str(e.value)
  for n in needles:
    assert n in msg, msg
  return msg


@pytest.mark.parametrize('change,needles', [
    (dict(bbox=[1.0, float('nan'), 3.0, 4.0]), ['non-finite']),
    (dict(bbox=[1.0, 2.0, -3.0, 4.0]), ['negative']),
    (dict(bbox=[-1.0, 2.0, 3.0, 4.0]), ['negative']),
    (dict(bbox=[1.0, 2.0, 3.0]), ['4 numbers']),
    (dict(segmentation=[]), ['empty segmentation']),
    (dict(segmentation=[[]]), ['polygon 0 is empty']),
    (dict(segmentation=[[1.0, 'x', 2.0, 3.0, 4.0, 5.0]]), ['polygon 0']),
    (dict(segmentation={'size': [10, 10], 'counts': 'abc'}), ['RLE size']),
    (dict(category_id=5), ['unknown category_id 5']),
    (dict(area=float('inf')), ['area']),
])
def test_malformed_annotation_names_file_and_id(tmp_path, change, needles):
  data = _base()
  bad = _ann(99)
  bad.update(change)
  data['annotations'].append(bad)
  _expect_error(tmp_path, data, 'ann.json', 'annotation id 99', *needles)


@pytest.mark.parametrize('key', ['bbox', 'category_id', 'area', 'image_id',
                                 'segmentation'])
def test_missing_key(tmp_path, key):
  data = _base()
  bad = _ann(42)
  del bad[key]
  data['annotations'].append(bad)
  _expect_error(tmp_path, data, 'ann.json', 'annotation id 42', key)


def test_structural_errors(tmp_path):
  data = _base()
  data['annotations'].append(_ann(1))
  _expect_error(tmp_path, data, 'duplicate annotation id 1')
  data = _base()
  data['annotations'].append(_ann(50, image_id=77))
  _expect_error(tmp_path, data, 'annotation id 50', 'image_id 77')
  data = _base()
  del data['images'][0]['height']
  _expect_error(tmp_path, data, 'image entry 0', 'height')
  data = _base()
  data['images'] = []
  data['annotations'] = []
  _expect_error(tmp_path, data, 'ann.json', 'no images')
  data = _base()
  data['annotations'] = []
  _expect_error(tmp_path, data, 'ann.json', 'no image left')
  data = _base()
  del data['categories']
  _expect_error(tmp_path, data, 'categories')
  (tmp_path / 'broken.json').write_text('{"images": [')
  with pytest.raises(coco.CocoFormatError, match='broken.json'):
    coco.load_coco(str(tmp_path / 'broken.json'), str(tmp_path), train=True)
  with pytest.raises(FileNotFoundError, match='nope.json'):
    coco.load_coco(str(tmp_path / 'nope.json'), str(tmp_path), train=True)


def test_missing_and_corrupt_image(tmp_path):
  data = _base()
  ann, img = _write(tmp_path, data)
  os.remove(os.path.join(img, 'b.png'))
  with pytest.raises(FileNotFoundError, match=r'image id 2.*b\.png'):
    coco.load_coco(ann, img, train=True)
  ds = coco.load_coco(ann, img, train=True, check_files=False)
  with pytest.raises(FileNotFoundError, match=r'b\.png.*image id 2'):
    coco.load_image(ds.records[1])
  with open(os.path.join(img, 'b.png'), 'wb') as f:
    f.write(b'not an image')
  ds = coco.load_coco(ann, img, train=True)
  with pytest.raises(ValueError, match=r'corrupt.*b\.png \(image id 2\)'):
    coco.load_image(ds.records[1])
  # A decodable image of the wrong size is an error too.
  cv2.imwrite(os.path.join(img, 'b.png'), np.zeros((40, 64, 3), np.uint8))
  with pytest.raises(ValueError, match=r'b\.png \(image id 2\).*misplaced'):
    coco.load_image(ds.records[1])


def test_pack_unpack_roundtrip():
  masks = ([np.arange(6, dtype=np.float64) / 3, np.arange(8.0)],
           {'size': [4, 5], 'counts': b'abc'}, [np.arange(10.0)])
  packed = coco.pack_masks(masks)
  out = coco.unpack_masks(packed['inst_num_polys'], packed['poly_lengths'],
                          packed['poly_coords'], packed['rle_counts'], 4, 5)
  assert out[1] == masks[1]
  for a, b in zip(copy.deepcopy(masks[0]) + masks[2], out[0] + out[2]):
    np.testing.assert_array_equal(a, b)
