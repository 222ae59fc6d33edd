"""Tests for the synthetic dataset and the grain training loader."""

import filecmp
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest

from maskrcnn_jax.data import coco
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import synthetic
from maskrcnn_jax.data import transforms as T

SMALL = T.TransformConfig(scales=((128, 96),), canvases=((96, 128), (128, 96)),
                          mask_crop=16, max_instances=8, max_ignored=2)


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('shapes'))
  synthetic.main(['--out', out, '--num-train', '26', '--num-val', '4',
                  '--image-size', '96', '--seed', '3', '--format', 'png'])
  return out


@pytest.fixture(scope='module')
def source(shapes):
  ds = coco.load_coco(f'{shapes}/annotations/instances_train.json',
                      f'{shapes}/train', train=True)
  return pipeline.CocoSource(ds)


def _loader(source, **kw):
  args = dict(batch_size=4, seed=7, shard_index=0, shard_count=1)
  args.update(kw)
  cfg = args.pop('cfg', SMALL)
  return pipeline.TrainLoader(source, cfg, **args)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert set(x) == set(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_synthetic_is_deterministic_and_consistent(shapes, tmp_path):
  again = str(tmp_path / 'again')
  synthetic.generate(again, 26, 4, 96, seed=3, image_format='png')
  other = str(tmp_path / 'other')
  synthetic.generate(other, 26, 4, 96, seed=4, image_format='png')
  for split in ('train', 'val'):
    name = f'annotations/instances_{split}.json'
    assert filecmp.cmp(f'{shapes}/{name}', f'{again}/{name}', shallow=False)
    assert not filecmp.cmp(f'{shapes}/{name}', f'{other}/{name}',
                           shallow=False)
    for f in os.listdir(f'{shapes}/{split}'):
      assert filecmp.cmp(f'{shapes}/{split}/{f}', f'{again}/{split}/{f}',
                         shallow=False)
  data = json.load(open(f'{shapes}/annotations/instances_train.json'))
  assert [c['id'] for c in data['categories']] == list(synthetic.CATEGORY_IDS)
  anns = data['annotations']
  kinds = {('crowd' if a['iscrowd'] else type(a['segmentation']).__name__
            if not isinstance(a['segmentation'], dict)
            else 'rle_' + type(a['segmentation']['counts']).__name__)
           for a in anns}
  assert kinds == {'list', 'rle_str', 'rle_list', 'crowd'}
  sizes = {(i['height'], i['width']) for i in data['images']}
  assert sizes == {(72, 96), (96, 72)}
  # Masks agree with the painted pixels and the boxes with the masks.
  ds = coco.load_coco(f'{shapes}/annotations/instances_train.json',
                      f'{shapes}/train', train=True)
  for r in ds.records[:6]:
    image = coco.load_image(r)
    for k in range(r.num_instances):
      m = coco.segmentation_to_bitmap(r.masks[k], r.height, r.width) > 0
      assert len(np.unique(image[m], axis=0)) == 1
      ys, xs = np.nonzero(m)
      np.testing.assert_allclose(
          r.boxes[k], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
  rle = mask_util.frPyObjects(
      [a for a in anns if a['iscrowd']][0]['segmentation'], 1, 1)
  assert mask_util.area(rle) > 0


def test_synthetic_knobs(tmp_path):
  """classes / radius_range / num_shapes (the quick start's set)."""
  root = str(tmp_path / 'knobs')
  synthetic.generate(root, 12, 0, 128, seed=0, landscape_fraction=1.0,
                     radius_range=(0.2, 0.25), num_shapes=(1, 2),
                     classes=('star', 'circle'))
  data = json.load(open(f'{root}/annotations/instances_train.json'))
  assert [(c['id'], c['name']) for c in data['categories']] == [
      (10, 'star'), (1, 'circle')]
  per_image = {}
  for a in data['annotations']:
    assert a['category_id'] in (1, 10)
    if not a['iscrowd']:
      per_image[a['image_id']] = per_image.get(a['image_id'], 0) + 1
      assert max(a['bbox'][2:]) <= 2 * 0.25 * 96 + 1
  assert max(per_image.values()) <= 2
  # Shapes cut by the border aside, the radius is at least 0.2 * 96.
  assert max(max(a['bbox'][2:]) for a in data['annotations']
             if not a['iscrowd']) > 2 * 0.2 * 96 * 0.9
  with pytest.raises(ValueError, match='classes must be'):
    synthetic.generate(root, 1, 0, 64, classes=('circle', 'oval'))
  with pytest.raises(ValueError, match='num_shapes'):
    synthetic.generate(root, 1, 0, 64, num_shapes=(3, 2))
  with pytest.raises(ValueError, match='radius_range'):
    synthetic.generate(root, 1, 0, 64, radius_range=(0.0, 0.1))


def test_epoch_batches_is_aspect_ratio_batch_sampler():
  rng = np.random.default_rng(0)
  portrait = rng.random(37) < 0.4
  got = pipeline.epoch_batches(portrait, 4, seed=5, epoch=2)
  order = np.random.default_rng([5, 0, 2]).permutation(37)
  buckets, want = {False: [], True: []}, []
  for i in order:  # MMDetection AspectRatioBatchSampler, leftovers dropped
    b = buckets[bool(portrait[i])]
    b.append(i)
    if len(b) == 4:
      want.append(list(b))
      b.clear()
  assert got.tolist() == want
  assert pipeline.batches_per_epoch(portrait, 4) == len(want)


def test_loader_batches(source):
  loader = _loader(source)
  assert loader.batches_per_epoch == len(loader.epoch_indices(0))
  it = iter(loader)
  epoch0 = _take(it, loader.batches_per_epoch)
  epoch1 = _take(it, loader.batches_per_epoch)
  it.close()
  seen = set()
  for b in epoch0:
    assert b['image'].shape[0] == 4 and b['gt_masks'].shape == (4, 8, 16, 16)
    portrait = source.widths[b['index']] < source.heights[b['index']]
    assert portrait.all() or not portrait.any()
    assert b['image'].shape[1:] == ((128, 96, 3) if portrait[0]
                                    else (96, 128, 3))
    assert not seen & set(b['index'].tolist())
    seen |= set(b['index'].tolist())
  idx0 = np.stack([b['index'] for b in epoch0])
  idx1 = np.stack([b['index'] for b in epoch1])
  np.testing.assert_array_equal(idx0, loader.epoch_indices(0))
  np.testing.assert_array_equal(idx1, loader.epoch_indices(1))
  assert not np.array_equal(idx0, idx1)  # reshuffled per epoch
  # Deterministic from the seed; another seed differs.
  _assert_batches_equal(epoch0[:2], _take(iter(_loader(source)), 2))
  other = _take(iter(_loader(source, seed=8)), 2)
  assert not np.array_equal(other[0]['index'], epoch0[0]['index'])


def test_resume_restores_exactly(source):
  loader = _loader(source)
  k = loader.batches_per_epoch - 1  # resume right before an epoch ends
  it = iter(loader)
  _take(it, k)
  state = json.loads(json.dumps(it.get_state()))
  rest = _take(it, 3)
  fresh = _loader(source).iterator(state)
  _assert_batches_equal(rest, _take(fresh, 3))
  assert fresh.step == k + 3 and fresh.epoch == 1
  with pytest.raises(ValueError, match='different pipeline'):
    _loader(source, seed=1).iterator(state)


def test_workers_match_in_process_and_resume(source):
  ref = _take(iter(_loader(source)), 4)
  it = _loader(source, num_workers=2).iterator()
  try:
    got = _take(it, 2)
    state = it.get_state()
  finally:
    it.close()
  _assert_batches_equal(ref[:2], got)
  it = _loader(source, num_workers=2).iterator(state)
  try:
    _assert_batches_equal(ref[2:], _take(it, 2))
  finally:
    it.close()


def test_shards_split_the_global_batch(source):
  whole = _take(iter(_loader(source, batch_size=4)), 2)
  parts = [_take(iter(_loader(source, batch_size=2, shard_index=h,
                               shard_count=2)), 2) for h in (0, 1)]
  for step in range(2):
    for k in whole[step]:
      np.testing.assert_array_equal(
          whole[step][k],
          np.concatenate([parts[0][step][k], parts[1][step][k]]), err_msg=k)


def test_truncation_is_counted_and_logged(source, caplog):
  cfg = T.TransformConfig(scales=((128, 96),),
                          canvases=((96, 128), (128, 96)), mask_crop=8,
                          max_instances=2, max_ignored=1)
  with caplog.at_level('WARNING'):
    loader = _loader(source, cfg=cfg)
  n = np.asarray(source.num_instances())
  assert loader.counts['images_over_max_instances'] == int((n > 2).sum()) > 0
  assert loader.counts['instances_dropped'] == int(np.maximum(n - 2, 0).sum())
  assert sum('images_over_max_instances' in m for m in caplog.messages) == 1
  b = next(iter(loader))
  np.testing.assert_array_equal(
      b['gt_num_dropped'], np.maximum(n[b['index']] - 2, 0))
  with pytest.raises(ValueError, match='no full batch'):
    _loader(source, batch_size=100)
