"""Evaluation throughput (images/s) at full resolution.

  python -m bench.eval_throughput [--num-images 6] [--batch-size 1] \
      [--workers N] [--json OUT]

R-50-FPN with the fixture weights (`fixtures.state_dict('r50_fpn')`), on
synthetic 640x480 images written by the benchmark (COCO-format set with the
80 COCO categories), resized to (1333, 800) -> canvas 800x1344 as in the
model zoo's test pipeline. Measures, after one warm-up pass (compilation):
  * eval: `evaluation.run_inference` (read + resize threads, pipelined
    device steps, mask paste + RLE encoding in worker processes) over all
    images, boxes + masks, then the COCO scoring time separately;
  * device: dispatch + fetch of the device step alone;
  * host: mask paste + RLE encoding of one image's outputs alone.
Results are on whatever JAX backend is active (the first local devices).
"""

import argparse
import json
import os
import tempfile
import time

import cv2
import jax
import numpy as np
import pycocotools.mask as mask_util


from maskrcnn_jax import config as config_lib  # pylint: disable=g-import-not-at-top
from maskrcnn_jax import evaluation
from maskrcnn_jax import masks as mask_ops
from maskrcnn_jax import predictor as predictor_lib
from maskrcnn_jax import preprocess
from maskrcnn_jax.convert import mmdet
from maskrcnn_jax.models import build
from maskrcnn_jax.testing import fixtures as fx

COCO_IDS = [i for i in range(1, 91)
            if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def write_set(root: str, num_images: int, hw=(480, 640), seed: int = 0):
  """Synthetic images (random shapes over noise) + an annotation file."""
  rng = np.random.default_rng(seed)
  h, w = hw
  images, anns = [], []
  os.makedirs(os.path.join(root, 'images'), exist_ok=True)
  for k in range(num_images):
    image = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    for _ in range(8):
      m = np.zeros((h, w), np.uint8)
      cx, cy = int(rng.integers(40, w - 40)), int(rng.integers(40, h - 40))
      if rng.random() < 0.5:
        cv2.circle(m, (cx, cy), int(rng.integers(15, 90)), 1, -1)
      else:
        bw, bh = rng.integers(20, 160, 2)
        cv2.rectangle(m, (int(cx - bw // 2), int(cy - bh // 2)),
                      (int(cx + bw // 2), int(cy + bh // 2)), 1, -1)
      image[m.astype(bool)] = rng.integers(60, 256, 3)
      rle = mask_util.encode(np.asfortranarray(m))
      anns.append(dict(id=len(anns) + 1, image_id=k + 1,
                       category_id=int(rng.choice(COCO_IDS)),
                       segmentation=dict(size=rle['size'],
                                         counts=rle['counts'].decode()),
                       area=float(mask_util.area(rle)),
                       bbox=[float(v) for v in mask_util.toBbox(rle)],
                       iscrowd=0))
    name = f'synthetic_{k:03d}.png'
    cv2.imwrite(os.path.join(root, 'images', name), image)
    images.append(dict(id=k + 1, file_name=name, height=h, width=w))
  cats = [dict(id=i, name=n) for i, n in zip(COCO_IDS, fx.coco_classes())]
  ann = os.path.join(root, 'ann.json')
  with open(ann, 'w') as f:
    json.dump(dict(images=images, annotations=anns, categories=cats), f)
  return ann, os.path.join(root, 'images')


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--num-images', type=int, default=6)
  p.add_argument('--batch-size', type=int, default=1)
  p.add_argument('--workers', type=int, default=None,
                 help='host post-processing processes (default: '
                      'evaluation.default_workers())')
  p.add_argument('--json', default=None, help='write the numbers here')
  args = p.parse_args(argv)

  config = config_lib.load_config(fx.config_path('r50_fpn'))
  variables = mmdet.state_dict_to_variables(
      fx.state_dict('r50_fpn'), config,
      expected=build.abstract_variables(config))
  predictor = predictor_lib.Predictor(config, variables, fx.coco_classes(),
                                      batch_size=args.batch_size)
  workers = (evaluation.default_workers() if args.workers is None
             else args.workers)
  with tempfile.TemporaryDirectory() as root:
    ann, image_dir = write_set(root, args.num_images)
    coco_gt = evaluation.load_coco_gt(ann)
    ids = coco_gt.getImgIds()

    # Warm-up: compiles the canvas program, starts nothing else.
    t = time.perf_counter()
    evaluation.run_inference(predictor, coco_gt, image_dir,
                             ids[:args.batch_size], workers=0,
                             progress=False)
    compile_s = time.perf_counter() - t

    # Full evaluation pipeline (inference + host post-processing).
    t = time.perf_counter()
    results, _ = evaluation.run_inference(predictor, coco_gt, image_dir, ids,
                                          workers=workers, progress=False)
    eval_s = time.perf_counter() - t
    t = time.perf_counter()
    metrics, _ = evaluation.compute_metrics(coco_gt, results, verbose=False,
                                            log=lambda s: None)
    score_s = time.perf_counter() - t
    dets = [len(r['labels']) for r in results]

    # Device step alone (inputs prepared beforehand).
    prepared = [predictor.prepare(preprocess.read_image(os.path.join(
        image_dir, coco_gt.imgs[i]['file_name']))) for i in ids]
    batches = [prepared[i:i + args.batch_size]
               for i in range(0, len(prepared), args.batch_size)]
    t = time.perf_counter()
    outs = [predictor.run_device(b) for b in batches]
    device_s = time.perf_counter() - t

    # Host post-processing alone (paste + RLE), one process.
    t = time.perf_counter()
    for b, out in zip(batches, outs):
      for j, prep in enumerate(b):
        boxes, _, _, logits = predictor.unpad(out, j, prep)
        mask_ops.encode_rle(mask_ops.paste_mask_logits(
            logits, boxes, prep.ori_hw, config.test.mask_thr_binary))
    host_s = time.perf_counter() - t

  n = len(ids)
  report = dict(
      backend=jax.default_backend(), devices=predictor.mesh.size,
      device_kind=jax.local_devices()[0].device_kind,
      cpu_count=os.cpu_count(), images=n, image_hw=[480, 640],
      canvas=list(prepared[0].canvas.shape[:2]), batch_size=args.batch_size,
      workers=workers, detections_per_image=float(np.mean(dets)),
      compile_s=round(compile_s, 2),
      eval_images_per_s=round(n / eval_s, 3),
      eval_s_per_image=round(eval_s / n, 3),
      device_images_per_s=round(n / device_s, 3),
      host_s_per_image=round(host_s / n, 3),
      coco_scoring_s=round(score_s, 3),
      bbox_mAP=metrics['bbox_mAP'])
  for k, v in report.items():
    print(f'{k:22s} {v}')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(report, f, indent=1)
  return report


if __name__ == '__main__':
  main()
