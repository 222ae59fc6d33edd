"""Training mask targets: exact MMDetection targets by default.

Bitmap recipes train on `roi_align(full bitmap, RoI, 28, aligned=True) >= 0.5`
(MMDetection's `mask_target`) from the transform's bit-packed canvas bitmaps;
tests/test_train_parity.py checks the losses and gradients of that path
against MMDetection's on ../shared/fixtures/train.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax import config as config_lib
from maskrcnn_jax.data import coco
from maskrcnn_jax.data import transforms as T
from maskrcnn_jax.ops import mask_targets
from maskrcnn_jax.testing import fixtures
from maskrcnn_jax.train import losses
from tests.conftest import REPO


def test_packed_bitmaps_give_the_same_targets():
  rng = np.random.default_rng(0)
  masks = (rng.random((3, 64, 96)) < 0.4).astype(np.uint8)
  masks[1, 10:50, 20:80] = 1
  rois = np.array([[20, 10, 80, 50], [0, 0, 96, 64], [5.5, 3.2, 40.7, 60.1],
                   [60, 30, 140, 90]], np.float32)  # last one leaves the map
  gt = np.array([1, 0, 2, 1], np.int32)
  want = mask_targets.bitmap_mask_targets(jnp.asarray(masks), rois, gt)
  got = mask_targets.bitmap_mask_targets(
      jnp.asarray(T.pack_bitmaps(masks)), rois, gt, packed=True)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert 0 < float(np.asarray(want).mean()) < 1
  with pytest.raises(ValueError, match='multiple of 8'):
    T.pack_bitmaps(np.zeros((1, 4, 12), np.uint8))


@pytest.mark.parametrize('flip', [False, True])
def test_transform_emits_mmdet_bitmaps(flip):
  """gt_bitmaps unpack to BitmapMasks (decode, nearest resize, flip) on the
  canvas, zero elsewhere."""
  train = fixtures.fixtures_dir() + '/train/coco'
  dataset = coco.load_coco(train + '/annotations.json', train + '/images',
                           train=True)
  record = dataset.records[0]
  cfg = T.TransformConfig(scales=((640, 384),), flip_prob=float(flip),
                          canvases=((384, 640), (640, 384)),
                          exact_masks=True)
  ex = T.train_transform(record, coco.load_image(record),
                         np.random.default_rng(0), cfg)
  ch, cw = ex['image'].shape[:2]
  h, w = (int(v) for v in ex['image_hw'])
  assert ex['gt_bitmaps'].shape == (cfg.max_instances, ch, cw // 8)
  full = np.unpackbits(ex['gt_bitmaps'], axis=-1, bitorder='little')
  n = record.num_instances
  want = T._resized_bitmaps(record.masks, record.height, record.width, h, w,  # pylint: disable=protected-access
                            flip)
  np.testing.assert_array_equal(full[:n, :h, :w], np.moveaxis(want, -1, 0))
  assert not full[:n, h:].any() and not full[:n, :, w:].any()
  assert not full[n:].any()


def test_training_uses_exact_targets_for_bitmap_recipes():
  c = config_lib.load_config(REPO + '/configs/r50_fpn_1x.py')
  assert mask_targets.training_mask_mode(c) == 'exact'
  assert losses.loss_config_from(c).mask_mode == 'exact'
  assert T.TransformConfig.from_config(c).exact_masks
  q = config_lib.load_config(REPO + '/configs/quickstart.py')
  assert losses.loss_config_from(q).mask_mode == 'exact'
  poly = config_lib.load_config(REPO + '/configs/r50_fpn_mstrain_3x.py')
  assert losses.loss_config_from(poly).mask_mode == 'compact'
  assert not T.TransformConfig.from_config(poly).exact_masks
  compact = config_lib.load_config(REPO + '/configs/r50_fpn_1x.py',
                                   ['train.mask_target=compact'])
  assert losses.loss_config_from(compact).mask_mode == 'compact'
  with pytest.raises(ValueError, match="mask_target='exact' needs"):
    mask_targets.training_mask_mode(config_lib.load_config(
        REPO + '/configs/r50_fpn_mstrain_3x.py',
        ['train.mask_target=exact']))
  with pytest.raises(ValueError, match='train.mask_target must be one of'):
    mask_targets.training_mask_mode(config_lib.load_config(
        REPO + '/configs/r50_fpn_1x.py', ['train.mask_target=bitmaps']))
