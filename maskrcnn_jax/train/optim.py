"""SGD, MMDetection's learning-rate schedules and frozen-parameter masks."""

import re
from typing import Any, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

_BN_MODULE = re.compile(r'^[bg]n\d+$')  # bn1.. or GroupNorm gn1..


def is_frozen(path: Sequence[str], config: ml_collections.ConfigDict) -> bool:
  """Whether a 'params' leaf (path of names) gets no gradient.

  MMDetection freezes the stem and the first `frozen_stages` stages
  (`frozen_stages=1`: conv1, bn1, layer1) and, when
  `norm_cfg.requires_grad=False` (caffe style, X-101-32x8d), every backbone
  BatchNorm's weight and bias.
  """
  if not path or path[0] != 'backbone':
    return False
  b = config.model.backbone
  top = path[1]
  if b.frozen_stages >= 0 and top in ('conv1', 'bn1', 'gn1'):
    return True
  m = re.match(r'^layer(\d+)$', top)
  if m and int(m.group(1)) <= b.frozen_stages:
    return True
  if not b.norm_requires_grad and len(path) >= 2:
    module = path[-2]
    parent = path[-3] if len(path) >= 3 else ''
    if _BN_MODULE.match(module) or (parent == 'downsample' and module == '1'):
      return True
  return False


def trainable_mask(params, config) -> Any:
  """Pytree of bools: True for trainable leaves."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: not is_frozen([k.key for k in p], config), params)


def warmup_factor(step, warmup_iters: int, ratio: float):
  """mmengine `LinearLR(start_factor=ratio, begin=0, end=warmup_iters)`.

  The factor goes linearly from `ratio` at iteration 0 to 1 at iteration
  `warmup_iters - 1` (mmengine's total_iters = end - begin - 1) and stays 1;
  `warmup_iters` 0 or 1 means no warmup.
  """
  if warmup_iters <= 1:
    return jnp.ones_like(jnp.asarray(step, jnp.float32))
  total = warmup_iters - 1
  progress = jnp.minimum(jnp.asarray(step, jnp.float32), total) / total
  return ratio + (1 - ratio) * progress


def learning_rate(config: ml_collections.ConfigDict,
                  steps_per_epoch: int) -> optax.Schedule:
  """MMDetection's param_scheduler: LinearLR warmup, then MultiStepLR.

  lr(it) = base * (ratio + (1 - ratio) * min(it, warmup - 1) / (warmup - 1))
  * 0.1 ** (number of milestones <= epoch(it)): mmengine's
  `LinearLR(start_factor=0.001, by_epoch=False, begin=0, end=500)` by
  iteration and `MultiStepLR(milestones, gamma=0.1)` by epoch, where an
  epoch is a pass over the (possibly repeated) dataset, as in MMDetection's
  RepeatDataset recipes.
  """
  t = config.train
  lr = scaled_lr(config)
  warmup, ratio = t.warmup_iters, t.warmup_ratio
  boundaries = [int(m * steps_per_epoch * t.dataset_repeats)
                for m in t.milestones]

  def schedule(step):
    step = jnp.asarray(step)
    decays = sum((step >= b).astype(jnp.float32) for b in boundaries)
    return lr * warmup_factor(step, warmup, ratio) * 0.1 ** decays

  return schedule


def scaled_lr(config) -> float:
  """base_lr scaled linearly with the global batch (unless disabled)."""
  t = config.train
  if not t.scale_lr:
    return t.base_lr
  return t.base_lr * t.global_batch_size / t.base_batch_size


def total_steps(config, steps_per_epoch: int) -> int:
  return int(config.train.epochs * config.train.dataset_repeats *
             steps_per_epoch)


def check_norm_eval(config: ml_collections.ConfigDict):
  """Rejects `model.backbone.norm_eval=False` for a BatchNorm backbone.

  The backbone's BatchNorm always runs in inference mode with its stored
  statistics (MMDetection `norm_eval=True`, as in every zoo config); batch
  statistics in training mode are not implemented.
  """
  b = config.model.backbone
  if not b.norm_eval and b.get('norm', 'BN') == 'BN':
    raise ValueError(
        'model.backbone.norm_eval=False is not supported: the backbone '
        'BatchNorm always runs in inference mode with fixed statistics '
        '(MMDetection norm_eval=True, as in every zoo config); set '
        'model.backbone.norm_eval=True')


def make_optimizer(config, params, steps_per_epoch: int
                   ) -> Tuple[optax.GradientTransformation, optax.Schedule]:
  """PyTorch SGD (momentum 0.9, coupled weight decay) on trainable params.

  As `torch.optim.SGD(lr, momentum, weight_decay)` in MMDetection's default
  OptimWrapper: buf = momentum * buf + (g + weight_decay * p);
  p -= lr * buf, on every trainable parameter; frozen ones never change.
  """
  check_norm_eval(config)
  t = config.train
  schedule = learning_rate(config, steps_per_epoch)
  sgd = optax.chain(optax.add_decayed_weights(t.weight_decay),
                    optax.trace(decay=t.momentum, nesterov=False),
                    optax.scale_by_learning_rate(schedule))
  mask = trainable_mask(params, config)
  return optax.multi_transform(
      {'train': sgd, 'frozen': optax.set_to_zero()},
      jax.tree_util.tree_map(lambda m: 'train' if m else 'frozen', mask)
  ), schedule
