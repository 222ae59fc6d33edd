"""Compilation target: which accelerator the programs are built for.

Backend-dependent defaults (RoIAlign and NMS strategies) are resolved here,
from the environment variable `MASKRCNN_JAX_TARGET=cpu|gpu|tpu` when it is
set, else from `jax.default_backend()`. Setting the variable on a CPU-only
machine compiles (for the CPU backend) the same program that a GPU or TPU
run would build, so that its optimized HLO can be inspected
(`bench/hlo_report.py`).
"""

import os

import jax

TARGETS = ('cpu', 'gpu', 'tpu')
ENV = 'MASKRCNN_JAX_TARGET'

# XLA:CPU options the package sets (`set_cpu_xla_flags`) unless XLA_FLAGS
# already names them. An empty YNNPACK fusion list compiles convolutions
# and dots with XLA's own CPU emitters instead of YNNPACK fusions (jaxlib
# 0.10.2): on a 2-core Sapphire Rapids VM, R-50-FPN inference at 800x1344
# went from 4.79 to 3.66 s per image and the quick-start train step from
# ~1.19 to ~1.08 s (the fusions' convolution weight gradients ran at
# ~12 GFLOP/s, the forward ones at ~45; BENCHMARKS.md). CPU flags only:
# GPU and TPU programs are unchanged.
CPU_XLA_FLAGS = {'xla_cpu_experimental_ynn_fusion_type': ''}
# Set to 0 to leave XLA_FLAGS exactly as given.
XLA_FLAGS_ENV = 'MASKRCNN_JAX_CPU_XLA_FLAGS'

# Per-target defaults for the config keys that accept 'auto'.
_DEFAULTS = {
    # 'chunked': lax.map over small chunks, each with the tightest window
    # (fastest on CPUs). 'tiered': one loop per window tier whose trip
    # count follows the RoIs that need it, no conditionals (accelerators).
    'roi_align_strategy': dict(cpu='chunked', gpu='tiered', tpu='tiered'),
    # 'tiled': tile loop that stops after the last valid box (CPU).
    # 'dense': one (N, N) suppression matrix and a fixed-point loop.
    'nms_strategy': dict(cpu='tiled', gpu='dense', tpu='dense'),
    # Training mask loss: 'direct' (the head on every mask slot at once,
    # plain autodiff; XLA:CPU runs convolution gradients inside loops ~20x
    # slower) or 'looped' (only the real positives, `train.mask_chunk` at a
    # time, train/mask_loss.py).
    'mask_loss_strategy': dict(cpu='direct', gpu='looped', tpu='looped'),
    # Training compute dtype (losses, box decoding and NMS stay float32).
    # None: the model's own dtype (model.dtype, float32 by default).
    'train_dtype': dict(cpu=None, gpu='bfloat16', tpu='bfloat16'),
    # Kernel gradient of grouped (ResNeXt) and 1x1 convolutions: 'sliced'
    # (one matmul per window offset; XLA:CPU's own takes ~100x longer for
    # grouped ones, 1.1-3x for 1x1) or 'xla' (ops/grouped_conv.py).
    'conv_kernel_grad': dict(cpu='sliced', gpu='xla', tpu='xla'),
}


def set_cpu_xla_flags() -> bool:
  """Adds `CPU_XLA_FLAGS` to $XLA_FLAGS (the ones it does not set already).

  Called when the package is imported. XLA reads $XLA_FLAGS when the
  first backend starts, so this only takes effect if no JAX computation
  ran before `import maskrcnn_jax` (true of the entry points, tests and
  notebooks). $MASKRCNN_JAX_CPU_XLA_FLAGS=0 turns it off. Returns whether
  XLA_FLAGS was changed.
  """
  if os.environ.get(XLA_FLAGS_ENV, '1').strip() == '0':
    return False
  flags = os.environ.get('XLA_FLAGS', '')
  given = {f.split('=', 1)[0].lstrip('-') for f in flags.split()}
  extra = [f'--{k}={v}' for k, v in CPU_XLA_FLAGS.items() if k not in given]
  if not extra:
    return False
  os.environ['XLA_FLAGS'] = ' '.join([flags.strip()] + extra).strip()
  return True


def current() -> str:
  """'cpu' | 'gpu' | 'tpu': $MASKRCNN_JAX_TARGET, else the default backend."""
  value = os.environ.get(ENV, '').strip().lower()
  if value:
    if value not in TARGETS:
      raise ValueError(f'{ENV}={value!r}: expected one of {TARGETS}')
    return value
  backend = jax.default_backend()
  if backend in ('gpu', 'cuda', 'rocm'):
    return 'gpu'
  return backend if backend in TARGETS else 'cpu'


def resolve(key: str, value: str, target: str = None):
  """`value`, or the target's default for `key` when `value` is 'auto'."""
  if value != 'auto':
    return value
  if key not in _DEFAULTS:
    raise ValueError(f'no target default for {key!r}')
  return _DEFAULTS[key][target or current()]


_EMULATED = []


def emulate_target_lowering() -> bool:
  """Lowers like the target when compiling for it on a CPU backend.

  JAX lowers threefry (the PRNG) with rolled 5-trip loops on CPU only; GPU
  and TPU get the unrolled form. When MASKRCNN_JAX_TARGET names an
  accelerator but the backend is the CPU (inspecting the accelerator
  program here), the unrolled lowering is registered for the CPU too, so the
  compiled program has the loop structure the target would get. Same
  random bits. Idempotent; returns whether the emulation is active.
  """
  if _EMULATED:
    return True
  if current() == 'cpu' or jax.default_backend() != 'cpu':
    return False
  try:
    # pylint: disable=import-outside-toplevel,protected-access
    from jax._src.interpreters import mlir
    from jax._src.random import threefry2x32 as threefry
    mlir.register_lowering(threefry.threefry2x32_p,
                           threefry._threefry2x32_lowering_rule,
                           platform='cpu')
  except (ImportError, AttributeError):
    return False
  _EMULATED.append(True)
  return True
