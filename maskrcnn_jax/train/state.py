"""Train state, the sharded train step and dynamic loss scaling."""

import functools
from typing import Any, Callable, Dict, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from maskrcnn_jax.train import losses as losses_lib


@flax.struct.dataclass
class LossScale:
  """Dynamic loss scale (PyTorch GradScaler defaults) for float16 training.

  scale doubles after `period` finite steps and halves on overflow; a step
  with non-finite gradients is skipped.
  """
  scale: jax.Array
  good_steps: jax.Array
  period: int = flax.struct.field(pytree_node=False, default=2000)
  dynamic: bool = flax.struct.field(pytree_node=False, default=True)

  @classmethod
  def create(cls, setting) -> 'LossScale':
    """setting: 'dynamic', a number (static scale) or None/1 (off)."""
    if setting == 'dynamic':
      return cls(jnp.float32(2.0 ** 16), jnp.int32(0))
    value = 1.0 if setting in (None, '', 'none') else float(setting)
    return cls(jnp.float32(value), jnp.int32(0), dynamic=False)

  def update(self, finite) -> 'LossScale':
    if not self.dynamic:
      return self
    grow = finite & (self.good_steps + 1 >= self.period)
    scale = jnp.where(finite, jnp.where(grow, self.scale * 2, self.scale),
                      self.scale * 0.5)
    good = jnp.where(finite & ~grow, self.good_steps + 1, 0)
    return self.replace(scale=scale, good_steps=good.astype(jnp.int32))


@flax.struct.dataclass
class TrainState:
  """Everything that a resumed run needs besides the data iterator."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  loss_scale: LossScale


def create_train_state(variables, tx: optax.GradientTransformation, rng,
                       loss_scale: LossScale) -> TrainState:
  params = variables['params']
  return TrainState(step=jnp.int32(0), params=params,
                    batch_stats=variables['batch_stats'],
                    opt_state=tx.init(params), rng=rng,
                    loss_scale=loss_scale)


def _all_finite(tree) -> jax.Array:
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def make_train_step(model, tx: optax.GradientTransformation,
                    loss_cfg: losses_lib.LossConfig, mesh: jax.sharding.Mesh,
                    frozen_mask=None) -> Callable:
  """jit(state, batch) -> (state, metrics) over the 'data' axis of `mesh`.

  The batch is sharded over the mesh; each device computes the losses of
  its images in groups of `loss_cfg.images_per_group` (MMDetection's
  per-GPU normalisation) and the gradients are averaged over groups and
  devices, so the result does not depend on the number of devices.
  Frozen parameters (`frozen_mask` True) are cut off with stop_gradient,
  so no backward pass runs through the frozen stem and stages.
  """

  def local_grads(params, batch_stats, batch, keys, scale):
    def loss_fn(p):
      if frozen_mask is not None:
        p = jax.tree_util.tree_map(
            lambda x, f: jax.lax.stop_gradient(x) if f else x, p,
            frozen_mask)
      total, metrics = model.apply(
          {'params': p, 'batch_stats': batch_stats}, batch, keys, loss_cfg,
          method=losses_lib.detector_losses)
      return total * scale, metrics

    grads, metrics = jax.grad(loss_fn, has_aux=True)(params)
    grads = jax.lax.pmean(grads, 'data')
    metrics = jax.tree_util.tree_map(
        lambda x: jax.lax.pmean(x.astype(jnp.float32), 'data'), metrics)
    return grads, metrics

  sharded = jax.shard_map(
      local_grads, mesh=mesh,
      in_specs=(P(), P(), P('data'), P('data'), P()),
      out_specs=(P(), P()), check_vma=False)

  def step_fn(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    # One sampler key per image of the global batch: results do not depend
    # on the number of devices.
    num_images = batch['images'].shape[0]
    keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(
        jnp.arange(num_images))
    scale = state.loss_scale.scale
    grads, metrics = sharded(state.params, state.batch_stats, batch, keys,
                             scale)
    grads = jax.tree_util.tree_map(lambda g: g / scale, grads)
    finite = _all_finite(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    skip = ~finite & state.loss_scale.dynamic
    keep = lambda new, old: jax.tree_util.tree_map(
        lambda a, b: jnp.where(skip, b, a), new, old)
    new_state = state.replace(
        step=state.step + 1, params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        loss_scale=state.loss_scale.update(finite))
    metrics = dict(metrics, grads_finite=finite.astype(jnp.float32),
                   loss_scale=scale)
    return new_state, metrics

  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P('data'))
  return jax.jit(step_fn, in_shardings=(replicated, batch_sharding),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def global_batch_array(batch: Dict[str, np.ndarray],
                       mesh: jax.sharding.Mesh) -> Dict[str, jax.Array]:
  """Host-local numpy batch -> global arrays sharded on 'data'.

  Each process passes its own slice (process_count slices make the global
  batch), as `jax.make_array_from_process_local_data` expects.
  """
  sharding = NamedSharding(mesh, P('data'))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
