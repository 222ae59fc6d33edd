"""Training data and periodic evaluation, as the training loop uses them."""

import logging
import os
from typing import Any, Callable, Dict, Optional

import jax
import ml_collections
import numpy as np

from maskrcnn_jax.data import coco
from maskrcnn_jax.data import pipeline

log = logging.getLogger(__name__)

# Batch keys the training losses read.
TRAIN_KEYS = ('image_hw', 'pad_hw', 'gt_boxes', 'gt_labels', 'gt_valid',
              'gt_masks')


def ensure_synthetic(config: ml_collections.ConfigDict) -> None:
  """Generates the config's synthetic dataset if it is configured and absent."""
  d = config.data
  if not d.get('synthetic') or os.path.isfile(d.train_ann):
    return
  from maskrcnn_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  s = d.synthetic
  if jax.process_index() == 0:
    log.info('generating the synthetic dataset in %s', d.root)
    synthetic.generate(d.root, s.num_train, s.num_val, s.image_size,
                       seed=s.seed,
                       landscape_fraction=s.get('landscape_fraction', 0.5),
                       radius_range=s.get('radius_range',
                                          synthetic.RADIUS_RANGE),
                       num_shapes=s.get('num_shapes', synthetic.NUM_SHAPES),
                       classes=s.get('classes', synthetic.CLASS_NAMES))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('synthetic dataset written')


class TrainData:
  """Host batches of the training set with a resumable iterator."""

  def __init__(self, config: ml_collections.ConfigDict, seed: int = 0):
    ensure_synthetic(config)
    t = config.train
    dataset = coco.load_coco(config.data.train_ann, config.data.train_images,
                             train=True)
    self.class_names = tuple(dataset.class_names)
    per_host = t.global_batch_size // jax.process_count()
    self.loader = pipeline.TrainLoader(
        pipeline.CocoSource(dataset), config, batch_size=per_host, seed=seed,
        num_workers=t.num_workers)
    self.steps_per_epoch = self.loader.batches_per_epoch
    self._it = iter(self.loader)

  def __next__(self) -> Dict[str, np.ndarray]:
    batch = next(self._it)
    out = {k: batch[k] for k in TRAIN_KEYS}
    if 'gt_bitmaps' in batch:  # exact mask targets (train.mask_target)
      out['gt_bitmaps'] = batch['gt_bitmaps']
    out['images'] = batch['image']
    return out

  def get_state(self) -> Dict[str, Any]:
    return self._it.get_state()

  def set_state(self, state: Dict[str, Any]) -> None:
    self._it.set_state(state)

  def close(self) -> None:
    """Stops the loader's worker processes."""
    if self._it is not None:
      self._it.close()
      self._it = None


def make_evaluator(config: ml_collections.ConfigDict, class_names,
                   show_dir: Optional[str] = None,
                   max_images: Optional[int] = None
                   ) -> Optional[Callable[..., Dict[str, float]]]:
  """fn(params, batch_stats) -> COCO metrics on the validation set, or None
  when the config has no validation annotations on disk."""
  d = config.data
  if not d.val_ann or not os.path.isfile(d.val_ann):
    log.info('no validation set (%s): no periodic evaluation', d.val_ann)
    return None
  from maskrcnn_jax import evaluation  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax import predictor as predictor_lib  # pylint: disable=g-import-not-at-top
  coco_gt = evaluation.load_coco_gt(d.val_ann)
  holder = {}

  def evaluate(params, batch_stats) -> Dict[str, float]:
    variables = {'params': params, 'batch_stats': batch_stats}
    if 'predictor' not in holder:
      holder['predictor'] = predictor_lib.Predictor(
          config, jax.device_get(variables), class_names)
    return evaluation.evaluate(
        holder['predictor'], coco_gt, d.val_images, variables=variables,
        show_dir=show_dir, max_images=max_images, progress=False,
        verbose=False, log=log.info)

  return evaluate
