"""`train_and_evaluate(config, workdir)`: the training loop behind train.py.

Order of initialisation (first that applies):
  1. resume: the latest checkpoint in <workdir>/checkpoints (parameters,
     optimizer, step, RNG, loss scale and data iterator position);
  2. `train.init_from`: a detector checkpoint (.pth or converted dir) to
     fine-tune; class-dependent head layers are re-initialised when the
     number of classes differs;
  3. the ImageNet backbone MMDetection starts from: `train.init_backbone`'s
     weights, downloaded once (maskrcnn_jax.zoo), or the .pth file
     `train.init_backbone_from`; the rest random;
  4. random initialisation, only with `train.init_backbone_from='none'`.

One jitted step runs over a 1-D 'data' mesh of every device of every
process (`jax.distributed` for multi-host). Checkpoints are written
asynchronously and atomically every `train.checkpoint_every` steps and at
the end; SIGTERM/SIGINT save and stop the run (`train_and_evaluate` returns
the signal; train.py exits with 128 + its number); a non-finite loss stops
the run naming the step and the loss.

The workdir is locked for the run (`workdir.WorkdirLock`); a resume checks
the config against the stored one before anything is compiled
(`workdir.check_resume_config`) and cuts metrics.jsonl back to the restored
step. Images/s and the ETA leave out the first step (compilation).
"""

import json
import logging
import os
import signal
import time
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from maskrcnn_jax import checkpoint as checkpoint_lib
from maskrcnn_jax import config as config_lib
from maskrcnn_jax import errors
from maskrcnn_jax.models import build
from maskrcnn_jax.train import checkpointing
from maskrcnn_jax.train import init as init_lib
from maskrcnn_jax.train import losses as losses_lib
from maskrcnn_jax.train import metrics_log
from maskrcnn_jax.train import optim
from maskrcnn_jax.train import state as state_lib
from maskrcnn_jax.train import train_data
from maskrcnn_jax.train import workdir as workdir_lib

log = logging.getLogger(__name__)


class NonFiniteLossError(errors.UserError, RuntimeError):
  """A loss became NaN or Inf."""


class _Terminate:
  """Remembers SIGTERM/SIGINT so the loop can save and exit cleanly."""

  def __init__(self):
    self.requested = False
    self.signum = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    log.warning('received signal %d: saving a checkpoint and exiting', signum)
    self.requested = True
    self.signum = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def initialize_distributed(coordinator_address: Optional[str],
                           num_processes: Optional[int],
                           process_id: Optional[int]):
  """jax.distributed for multi-process runs (CPU uses gloo collectives)."""
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id)
  log.info('process %d of %d, %d local / %d global devices',
           jax.process_index(), jax.process_count(), jax.local_device_count(),
           jax.device_count())


def make_mesh() -> jax.sharding.Mesh:
  return jax.sharding.Mesh(np.asarray(jax.devices()), ('data',))


def check_batch_layout(config: ml_collections.ConfigDict, num_devices: int):
  """The global batch must split evenly over devices and loss groups."""
  t = config.train
  gb, group = t.global_batch_size, t.images_per_group
  if gb % num_devices:
    raise ValueError(
        f'train.global_batch_size={gb} does not divide over {num_devices} '
        f'devices; use a multiple of {num_devices}')
  if (gb // num_devices) % group:
    raise ValueError(
        f'{gb // num_devices} images per device do not split into groups of '
        f'train.images_per_group={group}')
  if gb % jax.process_count():
    raise ValueError(f'train.global_batch_size={gb} does not divide over '
                     f'{jax.process_count()} processes')


def _to_float(metrics) -> Dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def _make_workdir(workdir: str):
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise errors.UserError(f'cannot create the workdir {workdir}: '
                           f'{e.strerror}') from e
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise errors.UserError(f'the workdir {workdir} is not writable')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       max_steps: Optional[int] = None,
                       allow_config_change: bool = False) -> Dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it has checkpoints).

  Args:
    config: a locked model-zoo or quick-start config.
    workdir: output folder (checkpoints, metrics.jsonl, TensorBoard, config).
    max_steps: stop after this global step (for tests/smoke runs); the
      schedule still follows the config.
    allow_config_change: on resume, accept changed schedule / evaluation
      keys (`workdir.RESUME_SAFE_KEYS`).

  Returns:
    dict with the final step, the last logged metrics, the last evaluation
    metrics (if any) and `signal`: the number of the signal that stopped the
    run (None when it ran to its end).

  Raises:
    errors.UserError (one-line message): workdir in use or not writable,
    config changed on resume, bad data, non-finite loss, ...
  """
  _make_workdir(workdir)
  lock = (workdir_lib.WorkdirLock(workdir).acquire()
          if jax.process_index() == 0 else None)
  try:
    return _train(config, workdir, max_steps, allow_config_change)
  finally:
    if lock is not None:
      lock.release()


def _train(config, workdir, max_steps, allow_config_change):
  """train_and_evaluate once the workdir is locked."""
  t = config.train
  mesh = make_mesh()
  check_batch_layout(config, mesh.size)
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  mgr = checkpointing.manager(ckpt_dir, t.keep_checkpoints)
  resume_step = mgr.latest_step()
  is_main = jax.process_index() == 0
  if resume_step is not None:  # before any data is read or code compiled
    workdir_lib.check_resume_config(workdir, config, resume_step,
                                    allow_config_change, write=is_main)
  data = train_data.TrainData(config, seed=t.seed)
  steps_per_epoch = data.steps_per_epoch
  num_steps = optim.total_steps(config, steps_per_epoch)
  if max_steps is not None:
    num_steps = min(num_steps, max_steps)

  model = build.build_model(config, dtype=build.train_dtype(config))
  tx, schedule = optim.make_optimizer(config, build.abstract_variables(
      config)['params'], steps_per_epoch)
  frozen = jax.tree_util.tree_map(
      lambda m: not m, optim.trainable_mask(
          build.abstract_variables(config)['params'], config))
  loss_cfg = losses_lib.loss_config_from(
      config, images_per_group=t.images_per_group)
  train_step = state_lib.make_train_step(model, tx, loss_cfg, mesh, frozen)

  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  loss_scale = state_lib.LossScale.create(
      t.loss_scale if config.model.dtype == 'float16' else None)

  def fresh_state():
    variables = init_lib.initial_variables(config, data.class_names)
    return state_lib.create_train_state(
        variables, tx, jax.random.PRNGKey(t.seed), loss_scale)

  # Shapes only: random init traced abstractly, no checkpoint file read.
  abstract = jax.eval_shape(lambda: state_lib.create_train_state(
      build.init_variables(config, jax.random.PRNGKey(0)), tx,
      jax.random.PRNGKey(t.seed), loss_scale))
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      abstract)
  if resume_step is not None:
    state, data_state, meta = checkpointing.restore(mgr, abstract,
                                                    resume_step)
    data.set_state(data_state)
    log.info('resumed from %s at step %d', ckpt_dir, int(state.step))
  else:
    state = jax.device_put(fresh_state(), replicated)
    meta = {}
  meta = dict(meta, config_name=config.name,
              class_names=list(data.class_names),
              config=config_lib.config_to_dict(config),
              architecture=checkpoint_lib.architecture(config))
  if is_main:
    if resume_step is None:  # a fresh run: its config starts the history
      for step_, path in workdir_lib.stored_configs(workdir):
        if step_:
          os.remove(path)
      workdir_lib.write_config(os.path.join(workdir, 'config.json'), config)
    with open(os.path.join(workdir, 'class_names.json'), 'w') as f:
      json.dump(list(data.class_names), f)

  writer = metrics_log.MetricsWriter(workdir, enabled=is_main,
                                     resume_step=int(state.step))
  evaluator = train_data.make_evaluator(
      config, data.class_names,
      show_dir=os.path.join(workdir, 'predictions'))
  step = int(state.step)
  start_step = step
  last_metrics, eval_metrics = {}, {}
  evaluated_at = None
  pending = None  # (step, metrics) of the previous step, fetched lazily
  # Throughput and ETA from the end of the first step (which compiles).
  t_first, first_step = None, start_step + 1
  log.info('compiling the train step (first step is slow) ...')

  def finish(step_metrics):
    nonlocal last_metrics, t_first
    s, m = step_metrics
    m = _to_float(m)
    loss = m['total_loss']
    if not np.isfinite(loss) and not (config.model.dtype == 'float16' and
                                      t.loss_scale == 'dynamic'):
      bad = {k: m[k] for k in losses_lib.LOSS_NAMES if not np.isfinite(m[k])}
      raise NonFiniteLossError(f'non-finite loss at step {s}: total_loss='
                               f'{loss}, {bad}')
    last_metrics = m
    if t_first is None:
      t_first = time.time()
    if s % t.log_every == 0 or s == num_steps:
      row, eta = dict(m, lr=float(schedule(s - 1))), None
      done = s - first_step
      if done > 0:
        elapsed = time.time() - t_first
        row['images_per_sec'] = done * t.global_batch_size / max(elapsed,
                                                                 1e-9)
        eta = (num_steps - s) * elapsed / done
      writer.write(s, row, eta_seconds=eta)

  with _Terminate() as term:
    while step < num_steps:
      batch = state_lib.global_batch_array(next(data), mesh)
      state, metrics = train_step(state, batch)
      step += 1
      if pending is not None:
        finish(pending)
      pending = (step, metrics)
      stop = term.requested
      if step % t.checkpoint_every == 0 or step == num_steps or stop:
        finish(pending)
        pending = None
        checkpointing.save(mgr, step, state, data.get_state(), meta,
                           force=True)
      if stop:
        log.warning('stopped by signal at step %d (checkpoint saved)', step)
        break
      if evaluator and t.eval_every and step % t.eval_every == 0:
        eval_metrics = evaluator(state.params, state.batch_stats)
        evaluated_at = step
        writer.write(step, eval_metrics, prefix='val/')
    if pending is not None:
      finish(pending)
  mgr.wait_until_finished()
  if step == num_steps and not term.requested:
    # Every process takes part (orbax synchronises them); host 0 writes.
    checkpoint_lib.save_inference_checkpoint(
        os.path.join(workdir, 'final'),
        jax.device_get({'params': state.params,
                        'batch_stats': state.batch_stats}),
        data.class_names, config.name, overwrite=True,
        source=f'{workdir} step {step}', config=config)
    if evaluator and evaluated_at != step:
      eval_metrics = evaluator(state.params, state.batch_stats)
      writer.write(step, eval_metrics, prefix='val/')
  writer.close()
  data.close()
  return dict(step=step, metrics=last_metrics, eval=eval_metrics,
              state=state, signal=term.signum)
