"""Training step benchmark: R-50-FPN, 2 images per device on the config's
first canvas (800x1344).

  python -m bench.train_step [--config configs/r50_fpn_1x.py] [--steps 5]
      [--images-per-device 2] [--dtype float32|bfloat16] [--config.a.b=v]
      (MASKRCNN_JAX_TARGET=cpu|gpu|tpu picks the target's defaults)

Times the jitted train step (forward, losses with MMDetection's samplers,
backward, SGD update) on a synthetic batch with 10 GT instances per image,
after compilation, and reports peak memory: the device's peak bytes in use
where the backend reports it (GPUs), else the process's peak resident set.
The step is compiled once, ahead of time, for the replicated device state
it is then called with (`--steps 1` compiles exactly one program).
"""

import argparse
import resource
import statistics
import sys
import time

import jax
import numpy as np

from maskrcnn_jax import config as config_lib
from maskrcnn_jax import preprocess
from maskrcnn_jax.data import transforms
from maskrcnn_jax.models import build as build_lib
from maskrcnn_jax.ops import mask_targets
from maskrcnn_jax.train import losses
from maskrcnn_jax.train import optim
from maskrcnn_jax.train import state as state_lib


def synthetic_batch(config, n_images, num_gt=10, seed=0):
  """Images on the config's first canvas (R-50-FPN: 800x1344), each holding
  an image of the first training scale's size, and `num_gt` boxes with
  sides of 2.5-25% of the image's long side."""
  rng = np.random.default_rng(seed)
  m, s = config.train.max_instances, config.train.mask_crop
  num_gt = min(num_gt, m)
  h, w = (int(v) for v in config.input.canvases[0])
  # The first scale's keep-ratio size of a 427x640 image (800x1199
  # for (1333, 800) on the 800x1344 canvas), padded to the size divisor.
  ih, iw = preprocess.rescale_size((427, 640), config.train.scales[0])
  ih, iw = min(ih, h), min(iw, w)
  div = config.input.size_divisor
  ph, pw = min(-(-ih // div) * div, h), min(-(-iw // div) * div, w)
  side = max(ih, iw)
  boxes = np.zeros((n_images, m, 4), np.float32)
  wh = rng.uniform(side / 40, side / 4, (n_images, num_gt, 2))
  xy = rng.uniform(0, 1, (n_images, num_gt, 2)) * ([iw, ih] - wh)
  boxes[:, :num_gt] = np.concatenate([xy, xy + wh], -1)
  valid = np.zeros((n_images, m), bool)
  valid[:, :num_gt] = True
  labels = np.where(valid, rng.integers(0, config.model.num_classes,
                                        (n_images, m)), -1).astype(np.int32)
  batch = dict(images=rng.integers(0, 255, (n_images, h, w, 3), np.uint8),
               image_hw=np.tile([[ih, iw]], (n_images, 1)).astype(np.int32),
               pad_hw=np.tile([[ph, pw]], (n_images, 1)).astype(np.int32),
               gt_boxes=boxes, gt_labels=labels, gt_valid=valid)
  if mask_targets.training_mask_mode(config) == 'exact':
    # Full canvas bitmaps (the middle half of each box), bit-packed.
    bitmaps = np.zeros((n_images, m, h, w), bool)
    for i, j in zip(*np.nonzero(valid)):
      x0, y0, x1, y1 = boxes[i, j]
      qx, qy = (x1 - x0) / 4, (y1 - y0) / 4
      bitmaps[i, j, int(y0 + qy):int(y1 - qy), int(x0 + qx):int(x1 - qx)] = 1
    batch['gt_bitmaps'] = transforms.pack_bitmaps(bitmaps)
  else:
    masks = np.zeros((n_images, m, s, s), np.uint8)
    masks[:, :num_gt, s // 4:3 * s // 4, s // 4:3 * s // 4] = 255
    batch['gt_masks'] = masks
  return batch


def peak_memory_gib():
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**30, 'device peak'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, (
      'process max RSS')


def build(config_path, images_per_device, dtype, abstract=False,
          overrides=()):
  """The jitted step, its replicated state and a sharded synthetic batch.

  With `abstract`, state and batch are jax.ShapeDtypeStructs (for lowering
  without running anything, e.g. bench/hlo_report.py). `overrides`:
  'a.b=value' config overrides (`--config.a.b=value`), applied after the
  benchmark's own batch settings.
  """
  n_dev = jax.device_count()
  gb = images_per_device * n_dev
  config = config_lib.load_config(config_path, [
      f'train.global_batch_size={gb}', 'train.images_per_group=2',
      *overrides])
  dtype = dtype or build_lib.train_dtype(config)
  model = build_lib.build_model(config, dtype=dtype)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ('data',))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  abstract_vars = build_lib.abstract_variables(config)
  tx, _ = optim.make_optimizer(config, abstract_vars['params'], 1000)
  frozen = jax.tree_util.tree_map(
      lambda m: not m, optim.trainable_mask(abstract_vars['params'], config))
  step = state_lib.make_train_step(
      model, tx, losses.loss_config_from(config, images_per_group=2), mesh,
      frozen)

  def make_state(variables):
    return state_lib.create_train_state(variables, tx, jax.random.PRNGKey(0),
                                        state_lib.LossScale.create(None))

  host_batch = synthetic_batch(config, gb)
  if abstract:
    state = jax.eval_shape(make_state, abstract_vars)
    state = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                       sharding=replicated), state)
    batch_sharding = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec('data'))
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                     sharding=batch_sharding)
             for k, v in host_batch.items()}
  else:
    variables = build_lib.init_variables(config, jax.random.PRNGKey(0))
    state = jax.device_put(jax.jit(make_state)(variables), replicated)
    batch = state_lib.global_batch_array(host_batch, mesh)
  return dict(step=step, state=state, batch=batch, global_batch=gb,
              n_dev=n_dev, dtype=dtype)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default='configs/r50_fpn_1x.py')
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--images-per-device', type=int, default=2)
  p.add_argument('--dtype', default=None,
                 help='compute dtype (default: model.train_dtype, resolved '
                 'for the target: bfloat16 on GPU/TPU, float32 on CPU)')
  argv, overrides = config_lib.split_config_flags(sys.argv[1:])
  args = p.parse_args(argv)
  setup = build(args.config, args.images_per_device, args.dtype,
                overrides=overrides)
  state, batch, gb = setup['state'], setup['batch'], setup['global_batch']
  t0 = time.perf_counter()
  # Ahead-of-time: one compile for exactly these (device) argument types;
  # a mismatch would raise instead of silently compiling again.
  step = setup['step'].lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  med = statistics.median(times)
  mem, kind = peak_memory_gib()
  print(f'device: {jax.devices()[0].device_kind} x {setup["n_dev"]}; '
        f'{setup["dtype"]}; {args.images_per_device} images/device of '
        f'{tuple(batch["images"].shape[1:3])}')
  print(f'compile {compile_s:.1f} s; first step {times[0]:.3f} s; median '
        f'step {med:.3f} s; {gb / med:.2f} images/s; peak memory {mem:.2f} '
        f'GiB ({kind}); total_loss {float(metrics["total_loss"]):.4f}')


if __name__ == '__main__':
  main()
