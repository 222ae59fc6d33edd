"""Float32 parity with MMDetection 3.3.0 on the reference fixtures.

For each fixture architecture and image, the fixture weights are converted
with the production converter and run through the production model; every
stage is compared with what MMDetection computed (tolerances from the
fixtures README: features ~1e-4 relative, proposals/boxes/scores ~1e-3,
labels exact, pasted masks IoU > 0.99; near-ties in score may swap order).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax import config as config_lib
from maskrcnn_jax import masks as mask_ops
from maskrcnn_jax import preprocess
from maskrcnn_jax.convert import mmdet
from maskrcnn_jax.models import build
from maskrcnn_jax.testing import fixtures as fx

CASES = [(a, i) for a in fx.ARCH_CONFIGS for i in fx.IMAGES]


def _stage_outputs(module, images, image_hw, pad_hw, tf_rois, tf_mask_rois):
  """Every compared stage from one forward pass (features computed once)."""
  feats = module.features(images, image_hw, pad_hw)
  proposals, proposal_scores, _ = module.proposals(feats, image_hw, pad_hw)
  tf_cls, tf_reg = module.box_head(feats, tf_rois, pad_hw)
  tf_mask = module.mask_head(feats, tf_mask_rois, pad_hw)
  return dict(feats=feats, proposals=proposals,
              proposal_scores=proposal_scores, tf_cls=tf_cls, tf_reg=tf_reg,
              tf_mask=tf_mask,
              pred=module.predict(images, image_hw, pad_hw))


@functools.lru_cache(maxsize=None)
def _arch_setup(arch):
  config = config_lib.load_config(fx.config_path(arch))
  model = build.build_model(config)
  variables = mmdet.state_dict_to_variables(
      fx.state_dict(arch), config,
      expected=build.abstract_variables(config))
  run = jax.jit(lambda v, *args: model.apply(v, *args,
                                             method=_stage_outputs))
  return config, variables, run


@functools.lru_cache(maxsize=None)
def run_case(arch, image):
  config, variables, run = _arch_setup(arch)
  ref, meta = fx.reference(arch, image)
  prepared = preprocess.prepare_image(
      preprocess.read_image(fx.image_path(image)),
      tuple(config.input.test_scale), config.input.canvases)
  out = run(variables, prepared.canvas[None],
            np.asarray([prepared.image_hw], np.int32),
            np.asarray([prepared.pad_hw], np.int32),
            ref['tf_rois'][None, :, 1:], ref['tf_mask_rois'][None, :, 1:])
  out = jax.tree_util.tree_map(np.asarray, out)
  return out, ref, meta, prepared


def assert_close(actual, desired, rtol, what):
  """|a - d| <= rtol * max(|d|, 1) elementwise (relative to the scale)."""
  actual, desired = np.asarray(actual), np.asarray(desired)
  err = np.abs(actual - desired) / np.maximum(np.abs(desired), 1.0)
  assert err.max() <= rtol, (
      f'{what}: max scaled error {err.max():.3g} > {rtol} at '
      f'{np.unravel_index(err.argmax(), err.shape)}')


def match_near_ties(ours, ref, scores_ours, scores_ref, rtol, window=4,
                    tie=1e-5, extra_ok=None):
  """Row i of ref may match row j of ours with |i - j| <= window when the
  scores tie (|ds| <= tie); returns the matched index per ref row."""
  matched = []
  for i in range(len(ref)):
    best, best_err = None, np.inf
    for j in range(max(0, i - window), min(len(ours), i + window + 1)):
      if j != i and abs(scores_ours[j] - scores_ref[i]) > tie:
        continue
      if extra_ok is not None and not extra_ok(j, i):
        continue
      err = (np.abs(ours[j] - ref[i]) /
             np.maximum(np.abs(ref[i]), 1.0)).max()
      if err < best_err:
        best, best_err = j, err
    assert best is not None and best_err <= rtol, (
        f'row {i}: no match within {rtol} (best {best} err {best_err:.3g}):'
        f' ref {ref[i]}')
    matched.append(best)
  assert len(set(matched)) == len(matched), 'rows matched twice'
  return np.asarray(matched)


@pytest.mark.parametrize('arch,image', CASES)
def test_preprocessing(arch, image):
  out, ref, meta, prepared = run_case(arch, image)
  h, w = prepared.image_hw
  assert [h, w] == meta['img_shape']
  assert list(prepared.pad_hw) == meta['pad_shape']
  np.testing.assert_allclose(prepared.scale_factor, meta['scale_factor'],
                             rtol=1e-12)
  channels = prepared.canvas[:h, :w]
  np.testing.assert_array_equal(channels[..., ::-1], ref['resized_rgb'])


@pytest.mark.parametrize('arch,image', CASES)
def test_fpn_features(arch, image):
  out, ref, _, _ = run_case(arch, image)
  for lvl in range(5):
    c, h, w = ref[f'fpn{lvl}_shape']
    feat = out['feats'][lvl][0, :h, :w]
    assert feat.shape[-1] == c
    idx = ref[f'fpn{lvl}_idx']
    scale = np.abs(ref[f'fpn{lvl}_val']).max()
    vals = feat[idx[:, 1], idx[:, 2], idx[:, 0]]
    np.testing.assert_allclose(vals, ref[f'fpn{lvl}_val'], rtol=0,
                               atol=1e-4 * scale, err_msg=f'P{lvl + 2}')
    np.testing.assert_allclose(feat.mean(), ref[f'fpn{lvl}_mean'],
                               atol=1e-4 * scale)
    np.testing.assert_allclose(feat.std(), ref[f'fpn{lvl}_std'], rtol=1e-4)


@pytest.mark.parametrize('arch,image', CASES)
def test_rpn_proposals(arch, image):
  out, ref, _, _ = run_case(arch, image)
  scores = out['proposal_scores'][0]
  assert_close(np.sort(scores)[::-1], ref['rpn_scores'], 1e-3,
               'proposal scores')
  match_near_ties(out['proposals'][0], ref['rpn_boxes'], scores,
                  ref['rpn_scores'], rtol=1e-3)


@pytest.mark.parametrize('arch,image', CASES)
def test_box_head_teacher_forced(arch, image):
  out, ref, _, _ = run_case(arch, image)
  assert_close(out['tf_cls'][0], ref['tf_cls_score'], 1e-4, 'cls logits')
  assert_close(out['tf_reg'][0], ref['tf_bbox_pred'], 1e-4, 'box deltas')


@pytest.mark.parametrize('arch,image', CASES)
def test_mask_head_teacher_forced(arch, image):
  out, ref, _, _ = run_case(arch, image)
  logits = np.take_along_axis(out['tf_mask'][0],
                              ref['det_labels'][:, None, None, None],
                              axis=-1)[..., 0]
  assert_close(logits, ref['tf_mask_logits'], 1e-4, 'mask logits')


def _final(arch, image):
  out, ref, meta, prepared = run_case(arch, image)
  pred = out['pred']
  valid = pred['valid'][0]
  scale = np.asarray(prepared.scale_factor * 2, np.float32)
  boxes = pred['boxes'][0][valid] / scale
  scores = pred['scores'][0][valid]
  labels = pred['labels'][0][valid]
  assert len(scores) == meta['num_dets']
  matched = match_near_ties(
      boxes, ref['det_bboxes'], scores, ref['det_scores'], rtol=1e-3,
      extra_ok=lambda j, i: labels[j] == ref['det_labels'][i])
  return pred, boxes, scores, labels, matched, ref, meta


@pytest.mark.parametrize('arch,image', CASES)
def test_final_detections(arch, image):
  _, _, scores, labels, matched, ref, _ = _final(arch, image)
  np.testing.assert_array_equal(labels[matched], ref['det_labels'])
  assert_close(scores[matched], ref['det_scores'], 1e-3, 'det scores')


# Pixels whose pasted probability lies within this of the 0.5 threshold may
# fall either way under float32 rounding differences between CPUs (a 1e-3
# logit change flips them); on a 5-pixel mask one such pixel is IoU 0.8.
MASK_THRESHOLD_BAND = 0.01


@pytest.mark.parametrize('arch,image', CASES)
def test_pasted_masks(arch, image):
  pred, boxes, _, _, matched, ref, meta = _final(arch, image)
  logits = pred['mask_logits'][0][pred['valid'][0]]
  probs = (1 / (1 + np.exp(-logits))).astype(np.float32)
  boxes, probs = boxes[matched], probs[matched]
  masks = mask_ops.paste_masks(probs, boxes, meta['ori_shape'])
  ref_masks = mask_ops.decode_rle(meta['det_masks_rle'])
  ious = mask_ops.mask_iou(masks, ref_masks)
  assert (ious > 0.99).mean() >= 0.95, f'mask IoUs {np.sort(ious)[:5]}'
  # Outside the threshold band, every detection's mask equals the reference.
  sure_in = mask_ops.paste_masks(probs, boxes, meta['ori_shape'],
                                 threshold=0.5 + MASK_THRESHOLD_BAND)
  maybe_in = mask_ops.paste_masks(probs, boxes, meta['ori_shape'],
                                  threshold=0.5 - MASK_THRESHOLD_BAND)
  ambiguous = maybe_in & ~sure_in
  band_ious = mask_ops.mask_iou(np.where(ambiguous, ref_masks, masks),
                                ref_masks)
  assert (band_ious > 0.99).mean() >= 0.98, (
      f'mask IoUs outside the threshold band {np.sort(band_ious)[:5]}')
  assert band_ious.min() > 0.9
