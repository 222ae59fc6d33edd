"""Per-image losses and per-module gradient norms (tools/loss_report.py).

Each image of a COCO-format set runs as a batch of one through the training
losses, with the test scale, no flip, the mask targets training uses
(`train.mask_target`: by default for bitmap recipes the exact ones from the
transform's bit-packed canvas bitmaps, MMDetection's `mask_target`; with
'compact', the 112 x 112 crops) and, with `deterministic=True`, samplers
that take every positive and negative candidate (MMDetection with a sampler
larger than the candidates), so with exact targets the numbers are
comparable one to one with MMDetection's.
"""

import collections
from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from maskrcnn_jax import checkpoint as checkpoint_lib
from maskrcnn_jax.data import coco
from maskrcnn_jax.data import transforms
from maskrcnn_jax.models import build
from maskrcnn_jax.train import losses as losses_lib
from maskrcnn_jax.train import optim


def module_prefix(path) -> str:
  """Two-part MMDetection key prefix of a variable path ('backbone.layer2')."""
  return '.'.join(path[:2])


def grad_sq_norm_by_module(grads, config) -> Dict[str, float]:
  """Squared L2 norm of the gradients of trainable params, per prefix."""
  out = collections.defaultdict(float)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    names = [k.key for k in path]
    if optim.is_frozen(names, config):
      continue
    out[module_prefix(names)] += float(np.sum(np.square(
        np.asarray(g, np.float64))))
  return dict(out)


def example_batch(record, config) -> Dict[str, np.ndarray]:
  """Batch of one at the test scale, no flip, with the training targets.

  Holds gt_masks (compact crops) and, with exact targets, gt_bitmaps
  (bit-packed canvas bitmaps), as the training transform emits them.
  """
  cfg = transforms.TransformConfig.from_config(config, train=False,
                                               with_masks=True)
  image = coco.load_image(record)
  ex = transforms.train_transform(record, image, np.random.default_rng(0),
                                  cfg)
  keys = ('image_hw', 'pad_hw', 'gt_boxes', 'gt_labels', 'gt_valid',
          'gt_masks', 'gt_bitmaps')
  batch = {k: ex[k][None] for k in keys if k in ex}
  batch['images'] = ex['image'][None]
  return batch


def loss_report(config, checkpoint: str, ann_file: str, image_dir: str,
                deterministic: bool = False, seed: int = 0,
                file_names: Optional[Sequence[str]] = None) -> List[dict]:
  """One entry per image: file_name, losses, total_loss, grad norms.

  `file_names` restricts the report to those images (in dataset order).
  """
  model = build.build_model(config)
  variables, _ = checkpoint_lib.load_detector_variables(
      checkpoint, config, expected=build.abstract_variables(config))
  dataset = coco.load_coco(ann_file, image_dir, train=True)
  if dataset.num_classes != config.model.num_classes:
    raise ValueError(f'{ann_file} has {dataset.num_classes} classes, the '
                     f'model {config.model.num_classes}')
  # The training path's mask targets (train.mask_target).
  cfg = losses_lib.loss_config_from(config, deterministic=deterministic)

  def loss_fn(params, batch, rng):
    return model.apply({'params': params,
                        'batch_stats': variables['batch_stats']},
                       batch, rng, cfg, method=losses_lib.detector_losses)

  grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  report = []
  for i, record in enumerate(dataset.records):
    if file_names is not None and record.file_name not in file_names:
      continue
    batch = example_batch(record, config)
    (total, metrics), grads = grad_fn(variables['params'], batch,
                                      jax.random.PRNGKey(seed + i))
    if int(metrics['mask_rois_overflow']):
      raise RuntimeError(
          f'{record.file_name}: {int(metrics["rcnn_num_pos"])} positive RoIs '
          f'exceed the {cfg.max_mask_rois} mask slots; raise '
          'train.deterministic_max_mask_rois')
    names = losses_lib.LOSS_NAMES + ('acc',)
    report.append(dict(
        file_name=record.file_name,
        losses={k: float(metrics[k]) for k in names},
        total_loss=float(total),
        grad_sq_norm_by_module=grad_sq_norm_by_module(grads, config)))
  return report
