"""Mask R-CNN (FPN) as MMDetection 3.3.0 computes it, with static shapes.

`MaskRCNN.predict` maps a batch of uint8 canvases to padded detections:

    images (B, Hc, Wc, 3) uint8 in file channel order (BGR)
      -> normalise -> ResNet -> FPN (P2..P6) -> RPN proposals (B, 1000)
      -> RoIAlign 7x7 -> box head -> class-wise NMS -> (B, 100) detections
      -> RoIAlign 14x14 -> mask head -> (B, 100, 28, 28) mask logits.

Boxes are XYXY in pixels of the resized (not padded) image; the host-side
predictor rescales them to the original image and pastes the masks.
"""

import dataclasses
from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maskrcnn_jax import target as target_lib
from maskrcnn_jax.models import fpn as fpn_lib
from maskrcnn_jax.models import heads
from maskrcnn_jax.models import model_config
from maskrcnn_jax.models import resnet
from maskrcnn_jax.ops import anchors as anchor_ops
from maskrcnn_jax.ops import boxes as box_ops
from maskrcnn_jax.ops import nms as nms_ops
from maskrcnn_jax.ops import roi_align as roi_ops


@dataclasses.dataclass(frozen=True)
class TestConfig:
  """MMDetection `test_cfg` (see `maskrcnn_jax.config`)."""
  rpn_nms_pre: int = 1000
  rpn_max_per_img: int = 1000
  rpn_nms_iou: float = 0.7
  rpn_min_bbox_size: float = 0.0
  score_thr: float = 0.05
  nms_iou: float = 0.5
  max_per_img: int = 100
  max_candidates: int = 4096


@dataclasses.dataclass(frozen=True)
class InputConfig:
  """Normalisation applied on device: x = (image[c] - mean) / std."""
  mean: Tuple[float, ...] = (123.675, 116.28, 103.53)
  std: Tuple[float, ...] = (58.395, 57.12, 57.375)
  bgr_to_rgb: bool = True


def normalize_images(images, image_hw, input_cfg: InputConfig):
  """uint8 canvases (B, H, W, 3) -> float32, zero outside each image.

  Matches MMDetection's DetDataPreprocessor: optional BGR->RGB, (x - mean) /
  std, then zero padding (in normalised space) to the batch shape.
  """
  x = images.astype(jnp.float32)
  if input_cfg.bgr_to_rgb:
    x = x[..., ::-1]
  x = (x - jnp.asarray(input_cfg.mean, jnp.float32)) / jnp.asarray(
      input_cfg.std, jnp.float32)
  ys = jnp.arange(x.shape[1])[None, :, None]
  xs = jnp.arange(x.shape[2])[None, None, :]
  inside = (ys < image_hw[:, 0, None, None]) & (xs < image_hw[:, 1, None, None])
  return jnp.where(inside[..., None], x, 0.0)


def level_valid_hw(pad_hw, strides: Sequence[int]):
  """(B, 2) padded image sizes -> (B, L, 2) valid map sizes ceil(pad / s)."""
  return jnp.stack([-(-pad_hw // s) for s in strides], axis=1).astype(
      jnp.int32)


def first_k_true(mask, k: int):
  """Indices of the first k True entries of a (N,) mask, and their validity.

  Returns (k,) int32 indices (in increasing order, padded with arbitrary
  indices) and (k,) bool.
  """
  n = mask.shape[0]
  rank = jnp.where(mask, jnp.arange(n), n + jnp.arange(n))
  _, idx = jax.lax.top_k(-rank, k)
  return idx.astype(jnp.int32), mask[idx]


def _max_coordinate(boxes, valid):
  """max over the valid boxes' coordinates (0 if none), as batched_nms."""
  valid = jnp.broadcast_to(valid[..., None], boxes.shape)
  return jnp.where(valid.any(), jnp.max(jnp.where(valid, boxes, -jnp.inf)),
                   0.0)


def rpn_proposals(logits, deltas, anchors, anchor_valid, image_hw,
                  cfg_nms_pre: int, max_per_img: int, iou_threshold: float,
                  min_bbox_size: float,
                  stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                  nms_strategy: str = 'tiled'):
  """RPN proposals of one image (MMDetection `RPNHead.predict_by_feat`).

  Per level: top `nms_pre` by sigmoid score, decode (stds 1), clip, drop
  boxes with w or h <= min_bbox_size; then NMS per level (`batched_nms`
  with level ids, including its coordinate-offset arithmetic) and the best
  `max_per_img` overall.

  Args:
    logits: L arrays (N_l,) objectness logits.
    deltas: L arrays (N_l, 4).
    anchors: L numpy arrays (N_l, 4).
    anchor_valid: L arrays (N_l,) bool (cell inside the padded image).
    image_hw: (2,) resized image size, for clipping.
    nms_strategy: `nms_ops.nms_keep_sorted` strategy (same result).

  Returns:
    boxes (max_per_img, 4), scores (max_per_img,), valid (max_per_img,).
  """
  k = cfg_nms_pre
  all_boxes, all_scores, all_valid = [], [], []
  for logit, delta, anchor, valid in zip(logits, deltas, anchors,
                                         anchor_valid):
    scores = jnp.where(valid, jax.nn.sigmoid(logit), -jnp.inf)
    k_l = min(k, scores.shape[0])
    top_scores, idx = jax.lax.top_k(scores, k_l)
    boxes = box_ops.decode_deltas(jnp.asarray(anchor)[idx], delta[idx],
                                  image_hw, stds)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    ok = jnp.isfinite(top_scores) & (w > min_bbox_size) & (h > min_bbox_size)
    if k_l < k:
      boxes = jnp.pad(boxes, ((0, k - k_l), (0, 0)))
      top_scores = jnp.pad(top_scores, (0, k - k_l),
                           constant_values=-jnp.inf)
      ok = jnp.pad(ok, (0, k - k_l))
    all_boxes.append(boxes)
    all_scores.append(top_scores)
    all_valid.append(ok)
  boxes = jnp.stack(all_boxes)     # (L, K, 4), each level sorted by score
  scores = jnp.stack(all_scores)   # (L, K)
  valid = jnp.stack(all_valid)     # (L, K)
  # mmcv batched_nms: shift each level by level_id * (max coordinate + 1).
  max_coord = _max_coordinate(boxes, valid)
  level_ids = jnp.arange(boxes.shape[0], dtype=jnp.int32)
  shifted = boxes + nms_ops.group_offsets(level_ids, max_coord)[:, None, None]
  keep = jax.vmap(lambda b, v: nms_ops.nms_keep_sorted(
      b, v, iou_threshold, strategy=nms_strategy))(shifted, valid)
  flat_scores = jnp.where(keep, scores, -jnp.inf).reshape(-1)
  top_scores, idx = jax.lax.top_k(flat_scores, max_per_img)
  return boxes.reshape(-1, 4)[idx], top_scores, jnp.isfinite(top_scores)


def bbox_postprocess(rois, roi_valid, cls_logits, box_deltas, image_hw,
                     cfg: TestConfig, stds: Sequence[float],
                     nms_strategy: str = 'tiled'):
  """Class-wise detection of one image (MMDetection `multiclass_nms`).

  Args:
    rois: (N, 4) proposals; roi_valid: (N,) bool.
    cls_logits: (N, K + 1), background last; box_deltas: (N, 4K).
    image_hw: (2,) resized image size.

  Returns:
    boxes (D, 4), scores (D,), labels (D,) int32, valid (D,) bool, with
    D = cfg.max_per_img, sorted by descending score.
  """
  n, k1 = cls_logits.shape
  num_classes = k1 - 1
  scores = jax.nn.softmax(cls_logits, axis=-1)[:, :num_classes]
  boxes = box_ops.decode_deltas(
      jnp.broadcast_to(rois[:, None, :], (n, num_classes, 4)),
      box_deltas.reshape(n, num_classes, 4), image_hw, stds=stds)
  boxes = boxes.reshape(-1, 4)
  scores = scores.reshape(-1)
  candidate = jnp.repeat(roi_valid, num_classes) & (scores > cfg.score_thr)
  max_coord = _max_coordinate(boxes, candidate)
  m = min(cfg.max_candidates, scores.shape[0])
  top_scores, idx = jax.lax.top_k(jnp.where(candidate, scores, -jnp.inf), m)
  cand_boxes = boxes[idx]
  labels = (idx % num_classes).astype(jnp.int32)
  cand_valid = jnp.isfinite(top_scores)
  shifted = cand_boxes + nms_ops.group_offsets(labels, max_coord)[:, None]
  keep = nms_ops.nms_keep_sorted(shifted, cand_valid, cfg.nms_iou,
                                 strategy=nms_strategy)
  sel, valid = first_k_true(keep, cfg.max_per_img)
  return (jnp.where(valid[:, None], cand_boxes[sel], 0.0),
          jnp.where(valid, top_scores[sel], 0.0), labels[sel], valid)


class MaskRCNN(nn.Module):
  """Mask R-CNN with a ResNet/ResNeXt-FPN backbone.

  Submodule names (`backbone`, `neck`, `rpn_head`, `roi_head`) and all
  parameter paths mirror MMDetection's state_dict keys.
  """
  num_classes: int = 80
  backbone_cfg: model_config.BackboneConfig = model_config.BackboneConfig()
  neck_cfg: model_config.NeckConfig = model_config.NeckConfig()
  rpn_cfg: model_config.RPNConfig = model_config.RPNConfig()
  roi_cfg: model_config.RoIConfig = model_config.RoIConfig()
  # model.nms_strategy: 'auto' (per target), 'tiled' (CPU) or 'dense'
  # (accelerators); see `nms_ops`. Same result. Resolved: `nms_algorithm`.
  nms_strategy: str = model_config.ModelConfig.nms_strategy
  input_cfg: InputConfig = InputConfig()
  test_cfg: TestConfig = TestConfig()
  dtype: Any = jnp.float32
  precision: Any = None
  # GroupNorm groups wherever a sub-config's norm is 'GN' (MMDetection
  # norm_cfg num_groups; the norms themselves are in the sub-configs).
  norm_groups: int = 32

  def setup(self):
    kw = dict(dtype=self.dtype, precision=self.precision)
    b = self.backbone_cfg
    g = self.norm_groups
    self.backbone = resnet.ResNet(b.depth, b.groups, b.base_width, b.style,
                                  b.norm_eps, b.base_channels, norm=b.norm,
                                  num_groups=g, **kw)
    self.neck = fpn_lib.FPN(self.neck_cfg.out_channels,
                            self.neck_cfg.num_outs, self.roi_strides,
                            norm=self.neck_cfg.norm, num_groups=g, **kw)
    self.rpn_head = heads.RPNHead(
        len(self.anchor_scales) * len(self.anchor_ratios),
        self.rpn_cfg.feat_channels, self.anchor_strides, **kw)
    r = self.roi_cfg
    self.roi_head = heads.RoIHead(self.num_classes, r.fc_channels,
                                  r.num_shared_fcs, r.num_mask_convs,
                                  r.mask_channels, mask_norm=r.norm,
                                  num_groups=g, **kw)

  # ---- settings the layers and losses read (from the sub-configs) -------

  @property
  def anchor_strides(self) -> Tuple[int, ...]:
    return self.rpn_cfg.anchor_strides

  @property
  def anchor_scales(self) -> Tuple[float, ...]:
    return self.rpn_cfg.anchor_scales

  @property
  def anchor_ratios(self) -> Tuple[float, ...]:
    return self.rpn_cfg.anchor_ratios

  @property
  def rpn_stds(self) -> Tuple[float, ...]:
    return self.rpn_cfg.target_stds

  @property
  def roi_strides(self) -> Tuple[int, ...]:
    return self.roi_cfg.featmap_strides

  @property
  def finest_scale(self) -> float:
    return float(self.roi_cfg.finest_scale)

  @property
  def box_roi_size(self) -> int:
    return self.roi_cfg.box_roi_size

  @property
  def mask_roi_size(self) -> int:
    return self.roi_cfg.mask_roi_size

  @property
  def bbox_stds(self) -> Tuple[float, ...]:
    return self.roi_cfg.bbox_target_stds

  @property
  def roi_align_chunk(self) -> int:
    return self.roi_cfg.roi_align_chunk

  @property
  def roi_align_strategy(self) -> str:
    """'chunked', 'tiered' or 'dense' ('auto' resolved for the target)."""
    return target_lib.resolve('roi_align_strategy',
                              self.roi_cfg.roi_align_strategy)

  @property
  def nms_algorithm(self) -> str:
    """'tiled' or 'dense' (`nms_strategy`, 'auto' resolved for the target)."""
    return target_lib.resolve('nms_strategy', self.nms_strategy)

  # ---- building blocks (also used by tests and training) ----------------

  def features(self, images, image_hw, pad_hw):
    """uint8 canvases -> FPN levels P2..P6, each (B, H/s, W/s, C)."""
    x = normalize_images(images, image_hw, self.input_cfg)
    return self.neck(self.backbone(x, pad_hw), pad_hw)

  def rpn(self, feats, pad_hw):
    """Per level (B, N_l) objectness logits and (B, N_l, 4) deltas."""
    return self.rpn_head(feats, pad_hw)

  def anchors(self, feats):
    """Static per-level anchors (N_l, 4) for the canvas maps of `feats`."""
    return [anchor_ops.grid_anchors(f.shape[1:3], s, self.anchor_scales,
                                    self.anchor_ratios)
            for f, s in zip(feats, self.anchor_strides)]

  def proposals(self, feats, image_hw, pad_hw, nms_pre=None,
                max_per_img=None, iou_threshold=None):
    """RPN proposals (B, P, 4), scores (B, P), valid (B, P)."""
    cfg = self.test_cfg
    logits, deltas = self.rpn(feats, pad_hw)
    anchors = self.anchors(feats)
    num_base = len(self.anchor_scales) * len(self.anchor_ratios)
    valid_hw = level_valid_hw(pad_hw, self.anchor_strides)
    anchor_valid = [anchor_ops.anchor_valid_flags(f.shape[1:3],
                                                  valid_hw[:, l], num_base)
                    for l, f in enumerate(feats)]

    def one(lg, dl, av, hw):
      return rpn_proposals(
          lg, dl, anchors, av, hw,
          nms_pre or cfg.rpn_nms_pre, max_per_img or cfg.rpn_max_per_img,
          iou_threshold or cfg.rpn_nms_iou, cfg.rpn_min_bbox_size,
          self.rpn_stds, self.nms_algorithm)

    return jax.vmap(one)(logits, deltas, anchor_valid, image_hw)

  def roi_features(self, feats, rois, pad_hw, output_size):
    """RoIAlign of (B, N, 4) rois on P2..P5 -> (B, N, S, S, C)."""
    b, n = rois.shape[:2]
    batch_index = jnp.repeat(jnp.arange(b, dtype=jnp.int32), n)
    pooled = self.roi_features_flat(feats, rois.reshape(-1, 4), batch_index,
                                    pad_hw, output_size, rois_per_image=n)
    return pooled.reshape((b, n) + pooled.shape[1:])

  def roi_maps(self, feats) -> roi_ops.FlatLevels:
    """The RoI levels P2..P5 of `feats` flattened for RoIAlign; pass them
    as `feats` to every RoI method of a step to flatten only once."""
    if isinstance(feats, roi_ops.FlatLevels):
      return feats
    return roi_ops.flatten_levels(feats[:len(self.roi_strides)])

  def roi_features_flat(self, feats, rois, batch_index, pad_hw,
                        output_size, rois_per_image=None):
    """RoIAlign of (R, 4) rois of images batch_index (R,) -> (R, S, S, C).

    feats: the FPN levels or their `roi_maps`. rois_per_image: n when the
    RoIs are image-major in groups of n (needed by the 'dense' strategy).
    """
    return roi_ops.multilevel_roi_align(
        self.roi_maps(feats), rois, batch_index,
        level_valid_hw(pad_hw, self.roi_strides), output_size=output_size,
        strides=self.roi_strides, finest_scale=self.finest_scale,
        chunk_size=self.roi_align_chunk,
        precision=self.precision or jax.lax.Precision.HIGHEST,
        strategy=self.roi_align_strategy, rois_per_image=rois_per_image)

  def box_head(self, feats, rois, pad_hw):
    """(B, N, 4) rois -> (B, N, K+1) logits and (B, N, 4K) deltas."""
    pooled = self.roi_features(feats, rois, pad_hw, self.box_roi_size)
    b, n = rois.shape[:2]
    cls, reg = self.roi_head.bbox_head(pooled.reshape((b * n,) +
                                                      pooled.shape[2:]))
    return cls.reshape(b, n, -1), reg.reshape(b, n, -1)

  def mask_head(self, feats, rois, pad_hw):
    """(B, N, 4) rois -> (B, N, 28, 28, K) mask logits."""
    pooled = self.roi_features(feats, rois, pad_hw, self.mask_roi_size)
    b, n = rois.shape[:2]
    logits = self.roi_head.mask_head(pooled.reshape((b * n,) +
                                                    pooled.shape[2:]))
    return logits.reshape((b, n) + logits.shape[1:])

  # ---- inference ---------------------------------------------------------

  def predict(self, images, image_hw, pad_hw):
    """Full inference on a batch of canvases.

    Args:
      images: (B, Hc, Wc, 3) uint8, channel order as decoded (BGR).
      image_hw: (B, 2) int32 resized image size on the canvas.
      pad_hw: (B, 2) int32 image size rounded up to the size divisor.

    Returns:
      dict with boxes (B, D, 4) in resized-image pixels, scores (B, D),
      labels (B, D) int32 0-based, valid (B, D) bool, mask_logits
      (B, D, 28, 28) of each detection's own class; D = max_per_img.
    """
    feats = self.features(images, image_hw, pad_hw)
    rois, _, roi_valid = self.proposals(feats, image_hw, pad_hw)
    feats = self.roi_maps(feats)  # flattened once for both RoIAligns
    cls, reg = self.box_head(feats, rois, pad_hw)
    post = jax.vmap(lambda r, v, c, d, hw: bbox_postprocess(
        r, v, c, d, hw, self.test_cfg, self.bbox_stds, self.nms_algorithm))
    boxes, scores, labels, valid = post(rois, roi_valid, cls, reg, image_hw)
    mask_logits = self.mask_head(feats, boxes, pad_hw)  # (B, D, 28, 28, K)
    mask_logits = jnp.take_along_axis(
        mask_logits, labels[:, :, None, None, None], axis=-1)[..., 0]
    return dict(boxes=boxes, scores=scores, labels=labels, valid=valid,
                mask_logits=mask_logits)

  def __call__(self, images, image_hw, pad_hw):
    """Runs every layer once on dummy RoIs; used by `init`."""
    feats = self.features(images, image_hw, pad_hw)
    self.rpn(feats, pad_hw)
    b = images.shape[0]
    c = feats[0].shape[-1]
    self.roi_head(
        jnp.zeros((b, self.box_roi_size, self.box_roi_size, c), self.dtype),
        jnp.zeros((b, self.mask_roi_size, self.mask_roi_size, c),
                  self.dtype))
    return feats
