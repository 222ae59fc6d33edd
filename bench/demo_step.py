"""Per-image latency of what `demo.py` does for one image, on the fixtures.

  python -m bench.demo_step [--iters 5] [--config configs/r50_fpn_1x.py]
      [--out-dir DIR] [--config.a.b=value ...]

One image of `demo.py`'s loop (`demo_lib.run_demo`), timed after a warm-up
(compilation): decode the file, the predictor (host resize, the jitted
device program, rescale and mask paste at the original size), the
prediction records, drawing at score 0.3, writing the PNG and
predictions.json. R-50-FPN with the fixture weights on the fixture's
427x640 landscape image (100 detections, all drawn): the counterpart of
MMDetection's `inference_detector` + `DetLocalVisualizer` + JSON dump on
the same image and weights, for a same-run comparison (BENCHMARKS.md).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax

from maskrcnn_jax import config as config_lib
from maskrcnn_jax import demo_lib
from maskrcnn_jax import predictor as predictor_lib
from maskrcnn_jax import preprocess
from maskrcnn_jax.convert import mmdet
from maskrcnn_jax.testing import fixtures


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default='configs/r50_fpn_1x.py')
  p.add_argument('--iters', type=int, default=5)
  p.add_argument('--out-dir', default=None)
  argv, overrides = config_lib.split_config_flags(sys.argv[1:])
  args = p.parse_args(argv)
  config = config_lib.load_config(args.config, overrides)
  variables = mmdet.state_dict_to_variables(fixtures.state_dict('r50_fpn'),
                                            config)
  predictor = predictor_lib.Predictor(config, variables,
                                      fixtures.coco_classes())
  path = fixtures.image_path('scene_landscape')
  out_dir = args.out_dir or tempfile.mkdtemp(prefix='demo_step_')
  os.makedirs(out_dir, exist_ok=True)

  def step():
    image = preprocess.read_image(path)
    det = predictor.predict([image])[0]
    records = demo_lib.draw_and_record(
        path, image, det, os.path.join(out_dir, 'scene_landscape.png'), 0.3)
    demo_lib.write_json_atomic(os.path.join(out_dir, 'predictions.json'),
                               records)
    return len(records)

  t0 = time.perf_counter()
  num = step()
  warm = time.perf_counter() - t0
  times = []
  for _ in range(args.iters):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  print(f'device: {jax.devices()[0].device_kind}; {num} detections; '
        f'warm-up (compile) {warm:.1f} s; steps (s): '
        + ' '.join(f'{t:.3f}' for t in times))
  print(f'JAX median demo step {statistics.median(times):.3f} s')


if __name__ == '__main__':
  main()
