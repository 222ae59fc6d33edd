"""Training targets and losses of Mask R-CNN, as MMDetection 3.3.0 defines them.

`detector_losses` is applied as a method of `MaskRCNN`:

    losses = model.apply(variables, batch, rng, loss_cfg,
                         method=detector_losses)

Static shapes throughout: assignment over all anchors / proposals with
validity masks, sampling with fixed slot counts, a fixed number of mask RoIs.

Loss definitions (names and normalisations as MMDetection):
  loss_rpn_cls   sigmoid BCE over sampled anchors / avg_factor
  loss_rpn_bbox  L1 on positive anchors' deltas / avg_factor
                 avg_factor = sum_images (max(#pos, 1) + max(#neg, 1))
  loss_cls       softmax CE over sampled RoIs (K+1 classes, background last)
                 / #sampled RoIs
  loss_bbox      L1 on the GT-class deltas of positive RoIs / #sampled RoIs
  loss_mask      BCE of each positive RoI's own-class 28x28 logits, mean
  acc            classification accuracy of sampled RoIs (%), not a loss
"""

import dataclasses
from typing import Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from maskrcnn_jax import target as target_lib
from maskrcnn_jax.models import mask_rcnn
from maskrcnn_jax.ops import anchors as anchor_ops
from maskrcnn_jax.ops import assign_sample
from maskrcnn_jax.ops import boxes as box_ops
from maskrcnn_jax.ops import mask_targets
from maskrcnn_jax.train import mask_loss

LOSS_NAMES = ('loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox',
              'loss_mask')
_EPS = float(np.finfo(np.float32).eps)


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """MMDetection train_cfg. `*_num_samples <= 0` takes every candidate."""
  rpn_pos_iou: float = 0.7
  rpn_neg_iou: float = 0.3
  rpn_min_pos_iou: float = 0.3
  rpn_num_samples: int = 256
  rpn_pos_fraction: float = 0.5
  rpn_proposal_nms_pre: int = 2000
  rpn_proposal_max_per_img: int = 1000
  rpn_proposal_nms_iou: float = 0.7
  rcnn_pos_iou: float = 0.5
  rcnn_neg_iou: float = 0.5
  rcnn_min_pos_iou: float = 0.5
  rcnn_num_samples: int = 512
  rcnn_pos_fraction: float = 0.25
  mask_size: int = 28
  # Positive RoIs per image that can get a mask loss (>= the sampler's
  # positives; with sampling disabled a cap, see `mask_rois_overflow`).
  # Only the real positives are computed, `mask_chunk` at a time
  # (train.mask_loss); results do not depend on the chunk.
  max_mask_rois: int = 128
  mask_chunk: int = 64
  # 'looped' (the chunk loop) or 'direct' (every slot at once, no loop).
  mask_strategy: str = 'looped'
  # 'exact' (gt_bitmaps (B, M, Hc, Wc / 8) bit-packed canvas bitmaps, exact
  # MMDetection; the training default, see ops.mask_targets), 'compact'
  # (gt_masks (B, M, S, S) over gt_boxes) or 'bitmap' (gt_bitmaps
  # (B, M, Hc, Wc) unpacked, exact).
  mask_mode: str = 'compact'
  # Images normalised together, as the images of one GPU in MMDetection
  # (samples_per_gpu); losses are averaged over groups. 0: the whole batch.
  images_per_group: int = 0


def loss_config_from(config, deterministic: bool = False,
                     mask_mode: Optional[str] = None,
                     images_per_group: int = 0) -> LossConfig:
  """LossConfig of `config.train`; deterministic takes every candidate.

  mask_mode None: the targets `train.mask_target` selects
  (`mask_targets.training_mask_mode`).
  """
  t = config.train
  if mask_mode is None:
    mask_mode = mask_targets.training_mask_mode(config)
  rpn_num = 0 if deterministic else t.rpn_num_samples
  rcnn_num = 0 if deterministic else t.rcnn_num_samples
  max_mask = int(t.rcnn_num_samples * t.rcnn_pos_fraction)
  if deterministic:
    max_mask = int(t.get('deterministic_max_mask_rois', 512))
  return LossConfig(
      rpn_pos_iou=t.rpn_pos_iou, rpn_neg_iou=t.rpn_neg_iou,
      rpn_min_pos_iou=t.rpn_min_pos_iou, rpn_num_samples=rpn_num,
      rpn_pos_fraction=t.rpn_pos_fraction,
      rpn_proposal_nms_pre=t.rpn_proposal_nms_pre,
      rpn_proposal_max_per_img=t.rpn_proposal_max_per_img,
      rpn_proposal_nms_iou=t.rpn_proposal_nms_iou,
      rcnn_pos_iou=t.rcnn_pos_iou, rcnn_neg_iou=t.rcnn_neg_iou,
      rcnn_min_pos_iou=t.rcnn_min_pos_iou, rcnn_num_samples=rcnn_num,
      rcnn_pos_fraction=t.rcnn_pos_fraction, mask_size=t.mask_size,
      max_mask_rois=max_mask, mask_chunk=t.get('mask_chunk', 64),
      mask_strategy=target_lib.resolve(
          'mask_loss_strategy', t.get('mask_loss_strategy', 'auto')),
      mask_mode=mask_mode,
      images_per_group=images_per_group)


def _group_mean(num, den, group: int):
  """mean over groups of (sum of num) / (sum of den); num, den: (B,)."""
  b = num.shape[0]
  group = group if group > 0 else b
  if b % group:
    raise ValueError(f'batch of {b} images does not split into groups of '
                     f'{group}')
  return jnp.mean(num.reshape(-1, group).sum(1) /
                  den.reshape(-1, group).sum(1))


_bce_with_logits = mask_loss.bce_with_logits


def _safe_encode(priors, gt, use, stds):
  """Deltas of priors -> gt where `use`, zeros elsewhere (no NaNs)."""
  gt = jnp.where(use[..., None], gt, priors)
  ok = (priors[..., 2] > priors[..., 0]) & (priors[..., 3] > priors[..., 1])
  use = use & ok
  safe_priors = jnp.where(use[..., None], priors,
                          jnp.array([0., 0., 1., 1.], priors.dtype))
  safe_gt = jnp.where(use[..., None], gt,
                      jnp.array([0., 0., 1., 1.], priors.dtype))
  return jnp.where(use[..., None],
                   box_ops.encode_deltas(safe_priors, safe_gt, stds), 0.0)


def rpn_losses(module, feats, batch, rng, cfg: LossConfig):
  """RPN losses and the (detached) training proposals."""
  logits, deltas = module.rpn(feats, batch['pad_hw'])
  anchors = module.anchors(feats)
  num_base = len(module.anchor_scales) * len(module.anchor_ratios)
  valid_hw = mask_rcnn.level_valid_hw(batch['pad_hw'], module.anchor_strides)
  level_valid = [anchor_ops.anchor_valid_flags(f.shape[1:3], valid_hw[:, l],
                                               num_base)
                 for l, f in enumerate(feats)]
  all_anchors = jnp.asarray(np.concatenate(anchors))
  all_logits = jnp.concatenate(logits, axis=1)
  all_deltas = jnp.concatenate(deltas, axis=1)
  all_valid = jnp.concatenate(level_valid, axis=1)
  stds = tuple(module.rpn_stds)

  def targets(gt_boxes, gt_valid, valid, key):
    gt_inds, _ = assign_sample.max_iou_assign(
        gt_boxes, gt_valid, all_anchors, valid, pos_iou_thr=cfg.rpn_pos_iou,
        neg_iou_thr=cfg.rpn_neg_iou, min_pos_iou=cfg.rpn_min_pos_iou)
    pos, neg = assign_sample.sample_mask(gt_inds, key, cfg.rpn_num_samples,
                                         cfg.rpn_pos_fraction)
    matched = gt_boxes[jnp.maximum(gt_inds - 1, 0)]
    target = _safe_encode(all_anchors, matched, pos, stds)
    avg = jnp.maximum(pos.sum(), 1) + jnp.maximum(neg.sum(), 1)
    return pos, neg, target, avg

  b = all_logits.shape[0]
  pos, neg, target, avg = jax.vmap(targets)(
      batch['gt_boxes'], batch['gt_valid'], all_valid, rng)
  avg = avg.astype(jnp.float32)
  # The eps of weight_reduce_loss is added once per group.
  avg = avg + _EPS * (jnp.arange(b) % (cfg.images_per_group or b) == 0)
  cls = _bce_with_logits(all_logits, pos.astype(jnp.float32))
  cls_sum = jnp.sum(jnp.where(pos | neg, cls, 0.0), axis=1)
  l1 = jnp.abs(all_deltas - target).sum(-1)
  bbox_sum = jnp.sum(jnp.where(pos, l1, 0.0), axis=1)
  loss_cls = _group_mean(cls_sum, avg, cfg.images_per_group)
  loss_bbox = _group_mean(bbox_sum, avg, cfg.images_per_group)

  cfg_nms = (cfg.rpn_proposal_nms_pre, cfg.rpn_proposal_max_per_img,
             cfg.rpn_proposal_nms_iou)
  detached_logits = [jax.lax.stop_gradient(x) for x in logits]
  detached_deltas = [jax.lax.stop_gradient(x) for x in deltas]

  def proposals(lg, dl, av, hw):
    return mask_rcnn.rpn_proposals(lg, dl, anchors, av, hw, *cfg_nms,
                                   module.test_cfg.rpn_min_bbox_size, stds,
                                   module.nms_algorithm)

  props, _, props_valid = jax.vmap(proposals)(
      detached_logits, detached_deltas, level_valid, batch['image_hw'])
  return (dict(loss_rpn_cls=loss_cls, loss_rpn_bbox=loss_bbox,
               rpn_num_pos=pos.sum()),
          jax.lax.stop_gradient(props), props_valid)


def rcnn_losses(module, feats, batch, proposals, proposals_valid, rng,
                cfg: LossConfig):
  """Box and mask head losses on sampled proposals (+ GT boxes)."""
  num_classes = module.num_classes
  m = batch['gt_boxes'].shape[1]
  p = proposals.shape[1]
  num_slots = cfg.rcnn_num_samples if cfg.rcnn_num_samples > 0 else m + p
  stds = tuple(module.bbox_stds)

  def sample(gt_boxes, gt_labels, gt_valid, props, props_valid, key):
    gt_inds, _ = assign_sample.max_iou_assign(
        gt_boxes, gt_valid, props, props_valid,
        pos_iou_thr=cfg.rcnn_pos_iou, neg_iou_thr=cfg.rcnn_neg_iou,
        min_pos_iou=cfg.rcnn_min_pos_iou)
    # GT boxes are added in front of the proposals, each assigned to itself.
    cand = jnp.concatenate([gt_boxes, props])
    cand_inds = jnp.concatenate(
        [jnp.where(gt_valid, jnp.arange(1, m + 1), -1), gt_inds])
    idx, valid, is_pos = assign_sample.sample_indices(
        cand_inds, key, cfg.rcnn_num_samples, cfg.rcnn_pos_fraction,
        num_slots)
    rois = cand[idx]
    assigned = jnp.maximum(cand_inds[idx] - 1, 0)
    labels = jnp.where(is_pos, gt_labels[assigned], num_classes)
    targets = _safe_encode(rois, gt_boxes[assigned], is_pos, stds)
    return rois, valid, is_pos, labels, targets, assigned

  b = proposals.shape[0]
  rois, valid, is_pos, labels, targets, assigned = jax.vmap(sample)(
      batch['gt_boxes'], batch['gt_labels'], batch['gt_valid'], proposals,
      proposals_valid, rng)
  rois = jax.lax.stop_gradient(rois)
  # Flattened once: the box and mask RoIAligns' feature gradients add up in
  # one buffer.
  feats = module.roi_maps(feats)
  cls, reg = module.box_head(feats, rois, batch['pad_hw'])
  group = cfg.images_per_group
  first = (jnp.arange(b) % (group or b) == 0).astype(jnp.float32)
  num_sampled = valid.sum(1).astype(jnp.float32)  # per image
  log_probs = jax.nn.log_softmax(cls, axis=-1)
  ce = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
  # avg_factor = max(#sampled, 1) per group, + eps (weight_reduce_loss).
  cls_den = num_sampled + _EPS * first
  loss_cls = _group_mean(jnp.sum(jnp.where(valid, ce, 0.0), 1), cls_den,
                         group)
  acc = 100.0 * _group_mean(
      jnp.sum(valid & (cls.argmax(-1) == labels), 1).astype(jnp.float32),
      num_sampled + 1e-12 * first, group)
  reg = reg.reshape(reg.shape[:2] + (num_classes, 4))
  own = jnp.take_along_axis(
      reg, jnp.minimum(labels, num_classes - 1)[..., None, None],
      axis=2)[:, :, 0]
  l1 = jnp.abs(own - targets).sum(-1)
  loss_bbox = _group_mean(jnp.sum(jnp.where(is_pos, l1, 0.0), 1), cls_den,
                          group)

  # Mask head on the positive RoIs only (the first max_mask_rois of each
  # image; positives come first), packed over the batch (train.mask_loss).
  k = min(cfg.max_mask_rois, num_slots)
  mask_pos = is_pos & (jnp.arange(num_slots) < k)[None, :]  # (B, S)
  loss_mask = _packed_mask_loss(module, feats, batch, rois, labels, assigned,
                                mask_pos, cfg)
  overflow = is_pos.sum() - mask_pos.sum()
  return dict(loss_cls=loss_cls, loss_bbox=loss_bbox, loss_mask=loss_mask,
              acc=acc, rcnn_num_pos=is_pos.sum(),
              rcnn_num_sampled=valid.sum(), mask_rois_overflow=overflow)


def _packed_mask_loss(module, feats, batch, rois, labels, assigned, mask_pos,
                      cfg: LossConfig):
  """loss_mask of the RoIs `mask_pos` (B, S) selects (`mask_loss`).

  rois (B, S, 4), labels (B, S) and assigned (B, S) (GT index in its
  image) are the sampled slots. Returns MMDetection's loss_mask: per group
  of images the mean over its positive RoIs (0 without any), averaged over
  the groups.
  """
  b, num_slots = mask_pos.shape
  m = batch['gt_boxes'].shape[1]
  most = b * min(cfg.max_mask_rois, num_slots)  # positives it can select
  if cfg.mask_strategy not in ('looped', 'direct'):
    raise ValueError("train.mask_loss_strategy must be 'auto', 'looped' or "
                     f"'direct', got {cfg.mask_strategy!r}")
  if cfg.mask_strategy == 'direct':
    # Every image's first k slots at once (its positives come first), so
    # the RoIs stay grouped by image.
    k = most // b
    img = jnp.repeat(jnp.arange(b, dtype=jnp.int32), k)
    slot = jnp.tile(jnp.arange(k, dtype=jnp.int32), b)
    ok = mask_pos[:, :k].reshape(-1)
    chunk, rois_per_image = max(most, 1), k
  else:
    if module.roi_align_strategy == 'dense':
      raise ValueError("model.roi.roi_align_strategy='dense' trains with "
                       "train.mask_loss_strategy='direct', got "
                       f'{cfg.mask_strategy!r}')
    chunk = max(min(cfg.mask_chunk, most), 1)
    capacity = -(-most // chunk) * chunk
    flat = mask_pos.reshape(-1)
    if capacity > flat.shape[0]:
      flat = jnp.pad(flat, (0, capacity - flat.shape[0]))
    idx, ok = mask_rcnn.first_k_true(flat, capacity)
    idx = jnp.minimum(idx, b * num_slots - 1)
    img, slot = idx // num_slots, idx % num_slots
    rois_per_image = None
  mask_rois = jnp.where(ok[:, None], rois[img, slot], 0.0)
  mask_labels = jnp.minimum(labels[img, slot], module.num_classes - 1)
  gt_index = img * m + assigned[img, slot]  # into the batch's GT list
  group = cfg.images_per_group or b
  per_group = mask_pos.sum(1).reshape(-1, group).sum(1).astype(jnp.float32)
  weights = jnp.where(ok, 1.0 / (jnp.maximum(per_group, 1.0)[img // group] *
                                 per_group.shape[0]), 0.0)

  if cfg.mask_mode == 'compact':
    gt_masks = batch['gt_masks']
    targs = dict(masks=gt_masks.reshape((-1,) + gt_masks.shape[2:]),
                 boxes=batch['gt_boxes'].reshape(-1, 4), rois=mask_rois,
                 gt=gt_index, clip=batch['pad_hw'][img])

    def target_fn(t, i):
      return mask_targets.compact_mask_targets(
          t['masks'], t['boxes'], t['rois'][i], t['gt'][i], t['clip'][i],
          cfg.mask_size)
  elif cfg.mask_mode in ('bitmap', 'exact'):
    bitmaps = batch['gt_bitmaps']
    targs = dict(masks=bitmaps.reshape((-1,) + bitmaps.shape[2:]),
                 rois=mask_rois, gt=gt_index)

    def target_fn(t, i):
      return mask_targets.bitmap_mask_targets(
          t['masks'], t['rois'][i], t['gt'][i], cfg.mask_size,
          packed=cfg.mask_mode == 'exact')
  else:
    raise ValueError(f'unknown mask_mode {cfg.mask_mode!r}')

  roi_feats = module.roi_features_flat(feats, jax.lax.stop_gradient(mask_rois),
                                       img, batch['pad_hw'],
                                       module.mask_roi_size, rois_per_image)
  head = module.roi_head.mask_head
  unbound_head = head.clone(parent=None)

  def head_fn(params, x):
    return unbound_head.apply({'params': params}, x)

  return mask_loss.chunked_mask_loss(
      head_fn, target_fn, chunk, head.variables['params'], roi_feats,
      mask_labels, weights, ok.sum(), targs)


def _is_key_batch(rng, b: int) -> bool:
  """(B, 2) uint32 raw keys, one per image."""
  return rng.ndim == 2 and rng.shape[0] == b


def detector_losses(module, batch: Dict[str, jax.Array], rng,
                    cfg: LossConfig):
  """All losses of one batch; use as `model.apply(..., method=...)`.

  Args:
    module: the bound `MaskRCNN`.
    batch: images (B, Hc, Wc, 3) uint8, image_hw (B, 2), pad_hw (B, 2),
      gt_boxes (B, M, 4) XYXY on the resized image, gt_labels (B, M),
      gt_valid (B, M), and gt_masks (B, M, S, S) uint8 (compact) or
      gt_bitmaps (B, M, Hc, Wc) (bitmap mode) or (B, M, Hc, Wc / 8)
      bit-packed (exact mode).
    rng: PRNG key of the samplers, or (B,) per-image keys (then the
      samples of an image do not depend on how the batch is split over
      devices).
    cfg: LossConfig.

  Returns:
    (total_loss, dict of the five losses, acc and counters).
  """
  b = batch['images'].shape[0]
  keys = rng if _is_key_batch(rng, b) else jax.random.split(rng, b)
  rng_rpn = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
  rng_rcnn = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
  feats = module.features(batch['images'], batch['image_hw'], batch['pad_hw'])
  rpn, proposals, proposals_valid = rpn_losses(module, feats, batch, rng_rpn,
                                               cfg)
  rcnn = rcnn_losses(module, feats, batch, proposals, proposals_valid,
                     rng_rcnn, cfg)
  metrics = {**rpn, **rcnn}
  total = sum(metrics[name] for name in LOSS_NAMES)
  metrics['total_loss'] = total
  return total, metrics
