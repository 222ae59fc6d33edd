"""The chunked mask loss (train.mask_loss) against a direct computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax.models import heads
from maskrcnn_jax.train import mask_loss


def _direct(head_fn, params, feats, labels, weights, targets, count):
  logits = head_fn(params, feats[:count])
  own = jnp.take_along_axis(logits, labels[:count, None, None, None],
                            axis=-1)[..., 0]
  bce = mask_loss.bce_with_logits(own, targets[:count]).mean(axis=(-1, -2))
  return jnp.sum(weights[:count] * bce)


@pytest.mark.parametrize('count,chunk', [(0, 8), (1, 8), (7, 8), (8, 8),
                                         (13, 8), (24, 8), (13, 24)])
def test_chunked_mask_loss_equals_direct(count, chunk):
  """chunk 8: the loop and its custom VJP; chunk 24 = capacity: no loop."""
  capacity, classes = 24, 3
  head = heads.FCNMaskHead(num_classes=classes, num_convs=2, channels=8,
                           precision=jax.lax.Precision.HIGHEST)
  rng = np.random.default_rng(count)
  feats = jnp.asarray(rng.normal(size=(capacity, 6, 6, 8)), jnp.float32)
  params = head.init(jax.random.PRNGKey(0), feats[:1])['params']
  labels = jnp.asarray(rng.integers(0, classes, capacity), jnp.int32)
  weights = jnp.asarray(np.where(np.arange(capacity) < count,
                                 rng.uniform(0.1, 1.0, capacity), 0.0),
                        jnp.float32)
  targets = jnp.asarray(rng.random((capacity, 12, 12)) < 0.5, jnp.float32)

  def head_fn(p, x):
    return head.apply({'params': p}, x)

  def target_fn(t, idx):
    return t[idx]

  def chunked(p, f):
    return mask_loss.chunked_mask_loss(head_fn, target_fn, chunk, p, f,
                                       labels, weights, count, targets)

  def direct(p, f):
    return _direct(head_fn, p, f, labels, weights, targets, count)

  got, got_grads = jax.jit(jax.value_and_grad(chunked, (0, 1)))(params, feats)
  want, want_grads = jax.value_and_grad(direct, (0, 1))(params, feats)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  flat_got = jax.tree_util.tree_leaves(got_grads)
  flat_want = jax.tree_util.tree_leaves(want_grads)
  assert len(flat_got) == len(flat_want)
  for g, w in zip(flat_got, flat_want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
  # Slots past `count` get no gradient.
  assert not np.any(np.asarray(got_grads[1][count:]))


def test_chunked_mask_loss_runs_only_the_needed_chunks():
  """The loop's trip count follows `count`: the head sees ceil(count / C)."""
  calls = []
  capacity, chunk = 32, 8

  def head_fn(p, x):
    jax.debug.callback(lambda: calls.append(1))
    return jnp.zeros(x.shape[:1] + (4, 4, 2)) + p

  def target_fn(t, idx):
    return jnp.zeros((idx.shape[0], 4, 4))

  for count, want in ((0, 0), (1, 1), (8, 1), (9, 2), (32, 4)):
    calls.clear()
    loss = mask_loss.chunked_mask_loss(
        head_fn, target_fn, chunk, jnp.float32(0.0),
        jnp.zeros((capacity, 2, 2, 1)), jnp.zeros(capacity, jnp.int32),
        jnp.ones(capacity), count, None)
    jax.block_until_ready(loss)
    assert len(calls) == want, count


def test_capacity_must_be_a_multiple_of_the_chunk():
  with pytest.raises(ValueError, match='multiple'):
    mask_loss.chunked_mask_loss(
        lambda p, x: x, lambda t, i: t, 8, None, jnp.zeros((12, 2, 2, 1)),
        jnp.zeros(12, jnp.int32), jnp.zeros(12), 3, None)


def _loss_and_grads(overrides):
  """total loss, losses and parameter gradients of one quick-start-sized
  batch (random weights, the benchmark's synthetic boxes and masks)."""
  from bench import train_step as bench_step
  from maskrcnn_jax import config as config_lib
  from maskrcnn_jax.models import build
  from maskrcnn_jax.train import losses
  config = config_lib.load_config('configs/quickstart.py', [
      'train.global_batch_size=2',
      'train.mask_target=compact', *overrides])
  model = build.build_model(config)
  variables = build.init_variables(config, jax.random.PRNGKey(0))
  batch = {k: jnp.asarray(v) for k, v in bench_step.synthetic_batch(
      config, 2, num_gt=6).items()}
  cfg = losses.loss_config_from(config)

  def total(params):
    out, metrics = model.apply({**variables, 'params': params}, batch,
                               jax.random.PRNGKey(1),  cfg,
                               method=losses.detector_losses)
    return out, metrics

  (loss, metrics), grads = jax.jit(jax.value_and_grad(
      total, has_aux=True))(variables['params'])
  return loss, metrics, grads


def test_dense_roi_align_and_mask_strategies_train_alike():
  """The quick start's 'dense' RoIAlign with the 'direct' mask loss (RoIs
  grouped by image) gives the losses and gradients of 'chunked' RoIAlign
  with the 'looped' mask loss (positives packed over the batch, chunk 8)."""
  ref_loss, ref_m, ref_g = _loss_and_grads([
      'model.roi.roi_align_strategy=chunked',
      'train.mask_loss_strategy=looped', 'train.mask_chunk=8'])
  assert float(ref_m['rcnn_num_pos']) > 8   # several mask chunks
  loss, metrics, grads = _loss_and_grads([])  # the quick start's own
  for name in ('loss_rpn_cls', 'loss_cls', 'loss_bbox', 'loss_mask'):
    np.testing.assert_allclose(float(metrics[name]), float(ref_m[name]),
                               rtol=2e-5, err_msg=name)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=2e-5)
  # The two RoIAligns agree to ~3e-6 relative (float summation order), but
  # in a randomly initialised network some ReLU inputs sit that close to 0
  # and flip, so gradients are compared by relative norm: per parameter
  # 5e-4 at most here, 1.2e-4 over all of them (a wrong RoI would be O(1)).
  sq_err = sq_ref = 0.0
  for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grads),
                          jax.tree_util.tree_leaves(ref_g)):
    g, r = np.asarray(g, np.float64), np.asarray(r, np.float64)
    err, norm = np.sum((g - r) ** 2), np.sum(r ** 2)
    assert err <= (3e-3) ** 2 * norm, jax.tree_util.keystr(path)
    sq_err, sq_ref = sq_err + err, sq_ref + norm
  assert sq_err <= (1e-3) ** 2 * sq_ref


def test_dense_roi_align_rejects_the_looped_mask_loss():
  with pytest.raises(ValueError, match="mask_loss_strategy='direct'"):
    _loss_and_grads(['train.mask_loss_strategy=looped'])
