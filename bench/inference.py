"""Inference benchmark: R-50-FPN, one 427x640 image resized to 800x1199.

  python bench/inference.py [--config configs/r50_fpn_1x.py] [--dtype float32]
      [--iters 10] [--batch-sizes 1,2,4]

End to end as MMDetection's benchmark counts it (network, post-processing
and mask pasting; no image decoding): host preprocessing, the jitted device
program on the 800x1344 canvas, box rescaling and mask paste at the
original size. Reports compile time, median latency at batch 1 and batched
throughput. Weights are the fixture ones (no download); the image is the
fixture's landscape scene.
"""

import argparse
import statistics
import time

import jax
import numpy as np

from maskrcnn_jax import config as config_lib
from maskrcnn_jax import predictor as predictor_lib
from maskrcnn_jax import preprocess
from maskrcnn_jax.convert import mmdet
from maskrcnn_jax.testing import fixtures


def run(config_path, dtype, iters, batch_sizes, overrides=()):
  config = config_lib.load_config(config_path, list(overrides))
  variables = mmdet.state_dict_to_variables(fixtures.state_dict('r50_fpn'),
                                            config)
  image = preprocess.read_image(fixtures.image_path('scene_landscape'))
  print(f'device: {jax.devices()[0].device_kind} x {jax.device_count()}, '
        f'dtype {dtype}, image {image.shape[:2]} -> '
        f'{preprocess.rescale_size(image.shape[:2], (1333, 800))}')
  rows = []
  for bs in batch_sizes:
    pred = predictor_lib.Predictor(config, variables,
                                   fixtures.coco_classes(), batch_size=bs,
                                   dtype=dtype)
    images = [image] * bs
    t0 = time.perf_counter()
    jax.block_until_ready(pred.predict(images)[0].masks)
    first = time.perf_counter() - t0
    times = []
    for _ in range(iters):
      t0 = time.perf_counter()
      dets = pred.predict(images)
      times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    rows.append((bs, first - med, med, med / bs, bs / med, len(dets[0])))
    print(f'batch {bs}: compile ~{first - med:.1f} s, median {med:.3f} s/'
          f'batch, {med / bs:.3f} s/img, {bs / med:.2f} img/s')
  print('\n| batch | compile (s) | median latency (s/batch) | s/img | img/s |')
  print('|---|---|---|---|---|')
  for bs, comp, med, per, ips, _ in rows:
    print(f'| {bs} | {comp:.1f} | {med:.3f} | {per:.3f} | {ips:.2f} |')
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default='configs/r50_fpn_1x.py')
  p.add_argument('--dtype', default='float32',
                 choices=['float32', 'bfloat16', 'float16'])
  p.add_argument('--iters', type=int, default=10)
  p.add_argument('--batch-sizes', default='1,2')
  p.add_argument('--override', action='append', default=[])
  args = p.parse_args()
  run(args.config, args.dtype, args.iters,
      [int(b) for b in args.batch_sizes.split(',')], args.override)


if __name__ == '__main__':
  main()
