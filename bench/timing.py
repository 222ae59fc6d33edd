"""Timing helper shared by the micro-benchmarks."""

import statistics
import time

import jax


def median_seconds(fn, args, iters: int) -> float:
  """Median wall time of fn(*args) over `iters` runs after one warm-up
  (which also compiles a jitted fn), each waited for to completion."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)
