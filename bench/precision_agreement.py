"""How far a lower-precision run is from float32 on the parity fixtures.

  python -m bench.precision_agreement [--dtype bfloat16] [--arch r50_fpn]
      [--images scene_landscape,scene_portrait] [--config.a.b=value ...]

Runs the fixture weights (no download) on the fixture images once in
float32 and once in --dtype (same config, same target defaults) and
reports, per image: detections of each run, the fraction of float32
detections matched by a same-label detection of the other run with box IoU
>= 0.9 (greedy, by score), the median and max |score| difference and the
median box IoU of the matches, the mean mask IoU of the matches, and
float32's own agreement with MMDetection's reference detections (same
measure) for scale.
"""

import argparse
import json
import sys

import numpy as np

from maskrcnn_jax import config as config_lib
from maskrcnn_jax import predictor as predictor_lib
from maskrcnn_jax import preprocess
from maskrcnn_jax.convert import mmdet
from maskrcnn_jax.testing import fixtures


def box_iou(a, b):
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), -1)
  area = lambda x: np.prod(x[:, 2:] - x[:, :2], -1)
  return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def match(ref_boxes, ref_scores, ref_labels, boxes, scores, labels,
          ref_masks=None, masks=None, thr=0.9):
  """Greedy same-label matching of `ref` detections (score order)."""
  if len(ref_boxes) == 0:
    return dict(matched=1.0, n_ref=0, n=len(boxes))
  iou = box_iou(ref_boxes, boxes) if len(boxes) else np.zeros(
      (len(ref_boxes), 0))
  iou = np.where(ref_labels[:, None] == labels[None], iou, 0)
  used = np.zeros(len(boxes), bool)
  pairs = []
  for i in np.argsort(-ref_scores, kind='stable'):
    cand = np.where(used, -1, iou[i]) if len(boxes) else np.zeros(0)
    if len(cand) and cand.max() >= thr:
      j = int(cand.argmax())
      used[j] = True
      pairs.append((i, j))
  out = dict(n_ref=len(ref_boxes), n=len(boxes),
             matched=round(len(pairs) / len(ref_boxes), 4))
  if pairs:
    ds = [abs(float(ref_scores[i] - scores[j])) for i, j in pairs]
    ious = [float(iou[i, j]) for i, j in pairs]
    out.update(score_delta_median=float(np.median(ds)),
               score_delta_max=float(np.max(ds)),
               box_iou_median=float(np.median(ious)))
    if ref_masks is not None and masks is not None:
      m = []
      for i, j in pairs:
        a, b = ref_masks[i], masks[j]
        u = np.logical_or(a, b).sum()
        m.append(np.logical_and(a, b).sum() / u if u else 1.0)
      out['mask_iou_mean'] = float(np.mean(m))
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--dtype', default='bfloat16')
  p.add_argument('--arch', default='r50_fpn')
  p.add_argument('--images', default='scene_landscape,scene_portrait')
  p.add_argument('--json', default=None)
  argv, overrides = config_lib.split_config_flags(sys.argv[1:])
  args = p.parse_args(argv)
  config = config_lib.load_config(fixtures.config_path(args.arch), overrides)
  variables = mmdet.state_dict_to_variables(fixtures.state_dict(args.arch),
                                            config)
  preds = {d: predictor_lib.Predictor(config, variables,
                                      fixtures.coco_classes(), dtype=d)
           for d in ('float32', args.dtype)}
  report = {}
  for name in args.images.split(','):
    image = preprocess.read_image(fixtures.image_path(name))
    f32, low = (preds[d].predict([image])[0] for d in ('float32',
                                                        args.dtype))
    ref, _ = fixtures.reference(args.arch, name)
    report[name] = dict(
        **{f'{args.dtype}_vs_float32': match(
            f32.boxes, f32.scores, f32.labels, low.boxes, low.scores,
            low.labels, f32.masks, low.masks)},
        float32_vs_mmdet=match(
            ref['det_bboxes'], ref['det_scores'],
            ref['det_labels'].astype(np.int32), f32.boxes, f32.scores,
            f32.labels))
    print(name, json.dumps(report[name]), flush=True)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(report, f, indent=1)


if __name__ == '__main__':
  main()
