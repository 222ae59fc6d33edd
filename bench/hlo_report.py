"""Accelerator proxies read from the optimized HLO, on any backend.

  MASKRCNN_JAX_TARGET=gpu python -m bench.hlo_report \
      [--config configs/r50_fpn_1x.py] [--programs infer1,infer8,train]
      [--dtype float32] [--canvas 800,1344] [--dump DIR] [--json OUT]
      [--config.a.b=value ...]

Compiles, for the target named by --target or $MASKRCNN_JAX_TARGET (else
the running backend; the program is built with that target's defaults even
when XLA compiles it for the CPU here), the inference program
(`MaskRCNN.predict`, as `Predictor`/`demo.py` jit it) at batch 1 and 8 and
the train step (`bench/train_step.py`'s, 2 images per device), with no
weights (abstract shapes only). From each optimized module (XLA's own dump)
it reports: conv+dot FLOPs weighted by loop trip counts (cost_analysis
counts a loop body once; conditionals: the branch with most FLOPs),
kernels launched inside loops per image (unknown-trip loops counted once),
host synchronisations (conditionals executed + loops of unknown trip
count, each counted once: a lower bound, every further iteration of such
a loop is one more), the bytes XLA's buffer assignment reserves, and an
H100 estimate (assumptions printed with it). The parser is
`bench/hlo_stats.py` (the measuring stick of the project's issues).
"""

import argparse
import glob
import json
import os
import re
import sys
import tempfile

from bench import hlo_stats

# H100 SXM figures for the estimate (dense, no sparsity).
H100 = dict(
    fp32_tflops=67.0,     # CUDA cores: float32 with precision='highest'.
    tf32_tflops=495.0,    # float32 matmuls with precision 'default'.
    bf16_tflops=989.0,
    hbm_tbps=3.35,
    mfu=0.4,              # fraction of the peak convs/dots reach.
    us_per_loop_kernel=7.0,   # serial launch + tail inside device loops.
    us_per_kernel=2.0,        # other kernels (pipelined launches).
    us_per_sync=20.0,         # device->host predicate read + relaunch.
)


def analyze_text(text, images):
  """Figures of one optimized HLO module text (see module docstring)."""
  m = hlo_stats.Module(text)
  total = m.analyze('max')
  orig = hlo_stats.Module.trip_count
  hlo_stats.Module.trip_count = staticmethod(lambda ins: 0)
  try:
    outside = m.analyze('max', unknown_trips={})
  finally:
    hlo_stats.Module.trip_count = staticmethod(orig)
  unknown = sum(1 for comp in m.comps.values() for ins in comp.values()
                if ins.op == 'while' and m.trip_count(ins) is None)
  conds = int(total['ops'].get('conditional', 0))
  loop_kernels = total['kernels'] - outside['kernels']
  top = collections_top(total['kernels_by'], 6)
  return dict(images=images,
              gflop_per_image=round(total['flops'] / 1e9 / images, 1),
              loop_kernels_per_image=round(loop_kernels / images),
              kernels_per_image=round(total['kernels'] / images),
              host_syncs_lower_bound=conds + unknown,
              conditionals_executed=conds, unknown_trip_loops=unknown,
              hbm_gb_estimate=round(total['bytes'] / 1e9, 2),
              top_kernel_sites=top)


def collections_top(counter, n):
  return [[k, round(v)] for k, v in counter.most_common(n)]


def buffer_bytes(dump_dir, text_path):
  f = text_path.replace('after_optimizations.txt',
                        'after_optimizations-memory-usage-report.txt')
  if os.path.exists(f):
    m = re.search(r'Total bytes: (\d+)', open(f).read())
    if m:
      return int(m.group(1))
  return None


def h100_estimate(r, dtype, precision):
  """Seconds per image on one H100 from the figures (a rough roofline)."""
  if dtype != 'float32':
    peak = H100['bf16_tflops']
  elif precision == 'highest':
    peak = H100['fp32_tflops']
  else:
    peak = H100['tf32_tflops']
  compute = r['gflop_per_image'] * 1e9 / (peak * 1e12 * H100['mfu'])
  memory = r['hbm_gb_estimate'] * 1e9 / r['images'] / (H100['hbm_tbps'] *
                                                       1e12)
  serial = 1e-6 * (
      H100['us_per_loop_kernel'] * r['loop_kernels_per_image'] +
      H100['us_per_kernel'] * (r['kernels_per_image'] -
                               r['loop_kernels_per_image']) +
      H100['us_per_sync'] * r['host_syncs_lower_bound'] / r['images'])
  return dict(peak_tflops=peak, ms_per_image=round(
      1e3 * (max(compute, memory) + serial), 1),
              ms_compute=round(1e3 * compute, 1),
              ms_memory=round(1e3 * memory, 1),
              ms_serial=round(1e3 * serial, 1))


def _compile(lowered, dump_dir):
  os.makedirs(dump_dir, exist_ok=True)
  before = set(glob.glob(os.path.join(dump_dir, '*')))
  compiled = lowered.compile(compiler_options={
      'xla_dump_to': dump_dir, 'xla_dump_hlo_as_text': True})
  new = [f for f in glob.glob(os.path.join(dump_dir,
                                           '*after_optimizations.txt'))
         if f not in before]
  path = max(new, key=os.path.getsize) if new else None
  return compiled, path


def inference_lowered(config, batch, canvas, dtype):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from maskrcnn_jax.models import build  # pylint: disable=import-outside-toplevel
  model = build.build_model(config, dtype=dtype)
  variables = build.abstract_variables(config)
  fn = jax.jit(lambda v, images, image_hw, pad_hw: model.apply(
      v, images, image_hw, pad_hw, method='predict'))
  h, w = canvas
  return fn.lower(variables,
                  jax.ShapeDtypeStruct((batch, h, w, 3), jnp.uint8),
                  jax.ShapeDtypeStruct((batch, 2), jnp.int32),
                  jax.ShapeDtypeStruct((batch, 2), jnp.int32))


def train_lowered(config_path, images_per_device, dtype, overrides=()):
  from bench import train_step  # pylint: disable=import-outside-toplevel
  setup = train_step.build(config_path, images_per_device, dtype,
                           abstract=True, overrides=overrides)
  return setup['step'].lower(setup['state'], setup['batch'])


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default='configs/r50_fpn_1x.py')
  p.add_argument('--programs', default='infer1,infer8,train')
  p.add_argument('--target', default=None, choices=('cpu', 'gpu', 'tpu'),
                 help='sets MASKRCNN_JAX_TARGET')
  p.add_argument('--dtype', default='float32')
  p.add_argument('--canvas', default='800,1344')
  p.add_argument('--images-per-device', type=int, default=2)
  p.add_argument('--dump', default=None, help='XLA dump directory')
  p.add_argument('--json', default=None, help='also write results here')
  from maskrcnn_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from maskrcnn_jax import target as target_lib  # pylint: disable=import-outside-toplevel
  argv, overrides = config_lib.split_config_flags(sys.argv[1:])
  args = p.parse_args(argv)
  if args.target:
    # Read when the programs are built (target_lib.current()).
    os.environ[target_lib.ENV] = args.target
  target = target_lib.current()
  config = config_lib.load_config(args.config, overrides)
  canvas = tuple(int(x) for x in args.canvas.split(','))
  dump = args.dump or tempfile.mkdtemp(prefix='hlo_report_')
  results = {}
  for prog in args.programs.split(','):
    if prog.startswith('infer'):
      batch = int(prog[len('infer'):])
      lowered = inference_lowered(config, batch, canvas, args.dtype)
      images = batch
    elif prog == 'train':
      lowered = train_lowered(args.config, args.images_per_device,
                              args.dtype, overrides)
      images = args.images_per_device
    else:
      raise SystemExit(f'--programs: unknown program {prog!r}')
    compiled, path = _compile(lowered, os.path.join(dump, prog))
    text = open(path).read() if path else compiled.as_text()
    r = analyze_text(text, images)
    r['buffer_bytes'] = buffer_bytes(dump, path) if path else None
    if r['buffer_bytes'] is None:
      mem = compiled.memory_analysis()
      r['buffer_bytes'] = (mem.temp_size_in_bytes +
                           mem.argument_size_in_bytes +
                           mem.output_size_in_bytes - mem.alias_size_in_bytes)
    r['buffer_gb'] = round(r['buffer_bytes'] / 1e9, 2)
    r['h100_estimate'] = h100_estimate(r, args.dtype,
                                       config.model.precision)
    results[prog] = r
    print(json.dumps(dict(program=prog, target=target, dtype=args.dtype,
                          **r)), flush=True)
  print('assumptions (H100 estimate):', json.dumps(H100))
  print(f'XLA dumps: {dump}')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(dict(target=target, dtype=args.dtype, config=args.config,
                     h100=H100, results=results), f, indent=1)


if __name__ == '__main__':
  main()
