"""Tests for maskrcnn_jax.data.tfds_coco (TF-free TFDS array_record)."""

import json
import os
import shutil
import sys
import zipfile

import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')

from maskrcnn_jax.data import coco  # pylint: disable=g-import-not-at-top
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import synthetic
from maskrcnn_jax.data import tfds_coco
from maskrcnn_jax.data import transforms as T

tfds.disable_progress_bar()

CFG = {
    'bitmap': T.TransformConfig(scales=((128, 96),),
                                canvases=((96, 128), (128, 96)), mask_crop=16,
                                max_instances=8, max_ignored=2),
    'polygon': T.TransformConfig(scales=((128, 96),),
                                 canvases=((96, 128), (128, 96)),
                                 mask_crop=16, max_instances=8, max_ignored=4,
                                 mask_format='polygon',
                                 max_polygon_vertices=24),
}


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp('tfds')
  shapes = str(root / 'shapes')
  synthetic.generate(shapes, 14, 5, 96, seed=1, image_format='jpg')
  splits = {
      'train': dict(ann_file=f'{shapes}/annotations/instances_train.json',
                    image_dir=f'{shapes}/train'),
      'val': dict(ann_file=f'{shapes}/annotations/instances_val.json',
                  image_dir=f'{shapes}/val', train=False)}
  data_dir = str(root / 'data')
  tfds_coco.build(data_dir, name='shapes', splits=splits)
  return shapes, data_dir


def _assert_records_equal(a, b):
  for f in ('image_id', 'file_name', 'height', 'width'):
    assert getattr(a, f) == getattr(b, f), f
  for f in ('boxes', 'labels', 'ann_ids', 'ignored_boxes', 'ignored_labels',
            'ignored_ann_ids'):
    x, y = getattr(a, f), getattr(b, f)
    assert x.dtype == y.dtype and np.array_equal(x, y), f
  assert len(a.masks) == len(b.masks)
  for ma, mb in zip(a.masks, b.masks):
    if isinstance(ma, dict):
      assert ma == mb
    else:
      assert len(ma) == len(mb)
      for p, q in zip(ma, mb):
        assert q.dtype == np.float64 and np.array_equal(p, q)  # exact float64


def test_tfds_records_equal_direct_reader_without_tensorflow(built):
  shapes, data_dir = built
  for split, train in (('train', True), ('val', False)):
    direct = coco.load_coco(f'{shapes}/annotations/instances_{split}.json',
                            f'{shapes}/{split}', train=train)
    src = tfds_coco.TfdsSource(data_dir, 'coco_instances/shapes', split)
    assert len(src) == len(direct)
    assert src.class_names == direct.class_names == synthetic.CLASS_NAMES
    assert src.cat_ids == direct.cat_ids
    np.testing.assert_array_equal(src.heights, direct.heights)
    np.testing.assert_array_equal(src.num_rle(), direct.num_rle())
    for i in range(len(direct)):
      _assert_records_equal(direct.records[i], src.record(i))
    record, image = src.load(0)
    np.testing.assert_array_equal(image, coco.load_image(direct.records[0]))
  ds = tfds.data_source('coco_instances/shapes', data_dir=data_dir,
                        split='train')
  assert len(ds) == 14 and isinstance(ds[0]['image_bytes'], bytes)
  assert 'tensorflow' not in sys.modules


@pytest.mark.parametrize('fmt', ['bitmap', 'polygon'])
def test_grain_batches_from_tfds_equal_direct(built, fmt):
  shapes, data_dir = built
  direct = pipeline.CocoSource(coco.load_coco(
      f'{shapes}/annotations/instances_train.json', f'{shapes}/train',
      train=True))
  src = tfds_coco.TfdsSource(data_dir, 'coco_instances/shapes', 'train')
  kw = dict(batch_size=2, seed=11, shard_index=0, shard_count=1)
  a = pipeline.TrainLoader(direct, CFG[fmt], **kw)
  b = pipeline.TrainLoader(src, CFG[fmt], **kw)
  assert a.fingerprint == b.fingerprint and a.counts == b.counts
  ia, ib = iter(a), iter(b)
  for _ in range(3):
    x, y = next(ia), next(ib)
    assert set(x) == set(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _coco2017_layout(shapes, manual, zipped):
  os.makedirs(manual, exist_ok=True)
  for split in ('train', 'val'):
    ann = f'{shapes}/annotations/instances_{split}.json'
    if zipped:
      with zipfile.ZipFile(f'{manual}/annotations_trainval2017.zip', 'a') as z:
        z.write(ann, f'annotations/instances_{split}2017.json')
      with zipfile.ZipFile(f'{manual}/{split}2017.zip', 'w') as z:
        for f in sorted(os.listdir(f'{shapes}/{split}')):
          z.write(f'{shapes}/{split}/{f}', f'{split}2017/{f}')
    else:
      os.makedirs(f'{manual}/annotations', exist_ok=True)
      shutil.copy(ann, f'{manual}/annotations/instances_{split}2017.json')
      shutil.copytree(f'{shapes}/{split}', f'{manual}/{split}2017')


@pytest.mark.parametrize('zipped', [True, False])
def test_coco2017_config_from_zips_or_folders(built, tmp_path, zipped):
  shapes, data_dir = built
  manual = str(tmp_path / 'manual')
  _coco2017_layout(shapes, manual, zipped)
  out = str(tmp_path / 'data')
  tfds_coco.build_coco2017(out, manual)
  ref = tfds_coco.TfdsSource(data_dir, 'coco_instances/shapes', 'val')
  src = tfds_coco.TfdsSource(out, 'coco_instances/coco2017', 'val')
  assert len(src) == len(ref) == 5
  for i in range(len(src)):
    _assert_records_equal(ref.record(i), src.record(i))
    np.testing.assert_array_equal(ref.load(i)[1], src.load(i)[1])
  assert len(tfds_coco.TfdsSource(out, 'coco_instances/coco2017', 'train')
             ) == 14


def test_build_errors(built, tmp_path):
  shapes, _ = built
  with pytest.raises(FileNotFoundError, match='missing or empty'):
    tfds_coco.build_coco2017(str(tmp_path / 'd0'), str(tmp_path / 'empty'))
  (tmp_path / 'other').mkdir()
  (tmp_path / 'other' / 'README').write_text('x')
  with pytest.raises(FileNotFoundError, match='annotations_trainval2017.zip'):
    tfds_coco.build_coco2017(str(tmp_path / 'd0'), str(tmp_path / 'other'))
  images = tmp_path / 'imgs'
  shutil.copytree(f'{shapes}/val', images)
  data = json.load(open(f'{shapes}/annotations/instances_val.json'))
  bad = data['images'][1]
  (images / bad['file_name']).write_bytes(b'garbage')
  ann = tmp_path / 'val.json'
  ann.write_text(json.dumps(data))
  with pytest.raises(Exception,
                     match=f'{bad["file_name"]}.*image id {bad["id"]}'):
    tfds_coco.build(str(tmp_path / 'd1'), name='broken', splits={
        'val': dict(ann_file=str(ann), image_dir=str(images), train=False)})
