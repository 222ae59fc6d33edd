"""Training data pipeline throughput (images/s) at full resolution.

  python -m bench.data_pipeline [--num-images 64] [--image-size 640] \
      [--batch-size 2] [--batches 24] [--workers 0 2] \
      [--mask-format bitmap] [--scale-mode fixed] [--json OUT]

Writes a synthetic COCO-format set (`maskrcnn_jax.data.synthetic`, JPEG,
640x480 / 480x640 images, 2-8 shapes each) to a temporary folder, then runs
`pipeline.TrainLoader` over it with the base config's recipe (1333x800
keep-ratio resize, flip 0.5, canvases 800x1344 / 1344x800, max_instances
100, compact masks 112x112) for each worker count: after a warm-up of 2
batches (worker start-up excluded) it times `--batches` batches. Also reports
the in-process cost of one example (decode + transform) for reference.
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np


from maskrcnn_jax import config as config_lib  # pylint: disable=g-import-not-at-top
from maskrcnn_jax.data import coco
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import synthetic
from maskrcnn_jax.data import transforms


def _per_example(source, tcfg, n=16):
  t_load = t_tf = 0.0
  for i in range(n):
    t0 = time.perf_counter()
    record, image = source.load(i % len(source))
    t1 = time.perf_counter()
    transforms.train_transform(record, image, np.random.default_rng(i), tcfg)
    t2 = time.perf_counter()
    t_load += t1 - t0
    t_tf += t2 - t1
  return t_load / n, t_tf / n


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--num-images', type=int, default=64)
  p.add_argument('--image-size', type=int, default=640)
  p.add_argument('--batch-size', type=int, default=2)
  p.add_argument('--batches', type=int, default=24)
  p.add_argument('--workers', type=int, nargs='+', default=[0, 2])
  p.add_argument('--mask-format', default='bitmap',
                 choices=('bitmap', 'polygon'))
  p.add_argument('--scale-mode', default='fixed',
                 choices=('fixed', 'choice', 'range'))
  p.add_argument('--json', default='')
  a = p.parse_args()

  config = config_lib.base_config()
  config_lib.set_train_scales(config, a.scale_mode)
  config.train.mask_format = a.mask_format
  tcfg = transforms.TransformConfig.from_config(config)

  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    synthetic.generate(tmp, a.num_images, 0, a.image_size, seed=0,
                       image_format='jpg')
    gen_s = time.perf_counter() - t0
    ds = coco.load_coco(f'{tmp}/annotations/instances_train.json',
                        f'{tmp}/train', train=True)
    source = pipeline.CocoSource(ds)
    load_s, tf_s = _per_example(source, tcfg)
    for workers in a.workers:
      loader = pipeline.TrainLoader(source, tcfg, batch_size=a.batch_size,
                                    seed=0, num_workers=workers,
                                    shard_index=0, shard_count=1)
      it = loader.iterator()
      try:
        t0 = time.perf_counter()
        for _ in range(2):
          batch = next(it)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(a.batches):
          batch = next(it)
        dt = time.perf_counter() - t0
      finally:
        it.close()
      rows.append(dict(workers=workers,
                       images_per_s=a.batches * a.batch_size / dt,
                       s_per_batch=dt / a.batches, warmup_s=warm,
                       canvas=list(batch['image'].shape[1:3])))
  info = dict(num_images=a.num_images, image_size=a.image_size,
              batch_size=a.batch_size, batches=a.batches,
              mask_format=a.mask_format, scale_mode=a.scale_mode,
              instances_per_image=ds.stats()['instances'] / len(ds),
              generate_s=gen_s, decode_s_per_image=load_s,
              transform_s_per_image=tf_s, cpu_count=os.cpu_count(),
              rows=rows)
  print(f'synthetic set: {a.num_images} images, long side {a.image_size}, '
        f'{info["instances_per_image"]:.1f} instances/image (generated in '
        f'{gen_s:.1f} s); recipe: {a.scale_mode} 1333x800, '
        f'{a.mask_format} masks, batch {a.batch_size}')
  print(f'in-process, per image: decode {1e3 * load_s:.1f} ms, transform '
        f'{1e3 * tf_s:.1f} ms')
  print('| workers | images/s | s/batch | warm-up (2 batches) s |')
  print('|---|---|---|---|')
  for r in rows:
    print(f'| {r["workers"]} | {r["images_per_s"]:.1f} | '
          f'{r["s_per_batch"]:.3f} | {r["warmup_s"]:.2f} |')
  if a.json:
    with open(a.json, 'w') as f:
      json.dump(info, f, indent=1)


if __name__ == '__main__':
  main()
