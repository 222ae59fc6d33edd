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

# Per-target defaults for the config keys that accept 'auto'.
_DEFAULTS = {
    # 'chunked': lax.map over small chunks, each with the tightest window
    # (fastest on CPUs). 'tiered': one loop per window tier whose trip
    # count follows the RoIs that need it, no conditionals (accelerators).
    'roi_align_strategy': dict(cpu='chunked', gpu='tiered', tpu='tiered'),
    # 'tiled': tile loop that stops after the last valid box (CPU).
    # 'dense': one (N, N) suppression matrix and a fixed-point loop.
    'nms_strategy': dict(cpu='tiled', gpu='dense', tpu='dense'),
    # Training compute dtype (losses, box decoding and NMS stay float32).
    # None: the model's own dtype (model.dtype, float32 by default).
    'train_dtype': dict(cpu=None, gpu='bfloat16', tpu='bfloat16'),
}


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
