"""Inference benchmark: R-50-FPN, one 427x640 image resized to 800x1199.

  python -m bench.inference [--config configs/r50_fpn_1x.py] [--dtype float32]
      [--iters 10] [--batch-sizes 1,2,4] [--config.a.b=value ...]

End to end as MMDetection's benchmark counts it (network, post-processing
and mask pasting; no image decoding): host preprocessing, the jitted device
program on the 800x1344 canvas, box rescaling and mask paste at the
original size. Reports compile time, median latency at batch 1 and batched
throughput; `--stages` times each stage jitted alone instead. Weights are
the fixture ones (no download); the image is the fixture's landscape scene.
"""

import argparse
import statistics
import sys
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


def stages(config_path, dtype, iters, overrides=()):
  """Median time of each stage jitted alone, batch 1 (same image)."""
  config = config_lib.load_config(config_path, list(overrides))
  variables = mmdet.state_dict_to_variables(fixtures.state_dict('r50_fpn'),
                                            config)
  pred = predictor_lib.Predictor(config, variables, fixtures.coco_classes(),
                                 dtype=dtype)
  model, v = pred.model, pred.variables
  p = pred.prepare(preprocess.read_image(
      fixtures.image_path('scene_landscape')))
  images, hw, ph = (np.asarray(x)[None] for x in (p.canvas, p.image_hw,
                                                  p.pad_hw))

  def timed(name, method, *args):
    fn = jax.jit(lambda v, *a: model.apply(v, *a, method=method))
    jax.block_until_ready(fn(v, *args))  # compile
    times = []
    for _ in range(iters):
      t0 = time.perf_counter()
      out = jax.block_until_ready(fn(v, *args))
      times.append(time.perf_counter() - t0)
    print(f'{name:32s} {statistics.median(times):.3f} s')
    return out

  def backbone(m, im, a, b):
    from maskrcnn_jax.models import mask_rcnn  # pylint: disable=g-import-not-at-top
    return m.backbone(mask_rcnn.normalize_images(im, a, m.input_cfg), b)

  def box_fcs(m, pooled):
    return m.roi_head.bbox_head(pooled)

  timed('backbone', backbone, images, hw, ph)
  feats = timed('backbone + FPN', 'features', images, hw, ph)
  timed('RPN head', 'rpn', feats, ph)
  rois = timed('RPN head + proposals', 'proposals', feats, hw, ph)[0]
  def box_roi_align(m, f, r, b):
    return m.roi_features(f, r, b, m.box_roi_size)

  pooled = timed('RoIAlign 7x7, 1000 RoIs', box_roi_align, feats, rois, ph)
  timed('box head FCs', box_fcs, pooled.reshape((-1,) + pooled.shape[2:]))
  timed('mask head + RoIAlign, 100 RoIs', 'mask_head', feats,
        rois[:, :config.test.max_per_img], ph)
  timed('whole device program', 'predict', images, hw, ph)
  out = pred.run_device([p])
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    pred.postprocess(out, 0, p)
    times.append(time.perf_counter() - t0)
  print(f'{"host: rescale + mask paste":32s} {statistics.median(times):.3f} s')


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default='configs/r50_fpn_1x.py')
  p.add_argument('--dtype', default='float32',
                 choices=['float32', 'bfloat16', 'float16'])
  p.add_argument('--iters', type=int, default=10)
  p.add_argument('--batch-sizes', default='1,2')
  p.add_argument('--override', action='append', default=[],
                 help='a.b=value (same as --config.a.b=value)')
  p.add_argument('--stages', action='store_true',
                 help='time each stage jitted alone (batch 1) instead')
  argv, overrides = config_lib.split_config_flags(sys.argv[1:])
  args = p.parse_args(argv)
  overrides = args.override + overrides
  if args.stages:
    stages(args.config, args.dtype, args.iters, overrides)
    return
  run(args.config, args.dtype, args.iters,
      [int(b) for b in args.batch_sizes.split(',')], overrides)


if __name__ == '__main__':
  main()
