"""`loss_mask` on the positive RoIs only, in a loop over chunks of them.

MMDetection 3.3.0 (`StandardRoIHead.mask_loss`, `FCNMaskHead.loss_and_target`)
runs the mask head on exactly the positive RoIs of each image
(`res.pos_priors`), takes each RoI's own-class 28 x 28 logits and averages
the per-pixel BCE against `mask_target` over all positive RoIs of the GPU's
images (here: of each group of `images_per_group` images, then the mean over
groups). How many positives there are is data dependent: at most
`rcnn_num_samples * rcnn_pos_fraction` (128) per image, about half that on
average.

Static shapes, work that follows the positives: the positive RoIs of the
whole device batch are packed in front of a buffer of `capacity` slots, and
the mask head, the targets and the BCE run in a `while_loop` over chunks of
`chunk` slots whose trip count is ceil(#positives / chunk). A `custom_vjp`
runs the backward as a second loop over the same chunks: each iteration
recomputes its chunk's forward (no activations are kept across chunks),
adds the chunk's parameter gradients to one accumulator and writes its
RoI-feature gradients in place. The targets are computed once, in the
forward loop, and kept for the backward (capacity x 28 x 28 floats).

The loss is sum_i w_i * mean(BCE_i) with w_i = 1 / (#positives of RoI i's
group * #groups) (0 on padding slots): MMDetection's value up to float
summation order. On GPUs every iteration of each loop is one host round
trip (its trip count is data dependent).

With chunk == capacity there is no loop: the head runs on every slot and
plain autodiff differentiates it. Training uses that on CPUs
(`train.mask_loss_strategy`), where XLA runs the convolution gradients
inside a while loop about 20x slower.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp

from maskrcnn_jax.ops import buffers


def bce_with_logits(x, z):
  """Elementwise binary cross-entropy of logits x against targets z."""
  return jnp.maximum(x, 0) - x * z + jnp.log1p(jnp.exp(-jnp.abs(x)))


def _chunk(x, start, size: int):
  return jax.lax.dynamic_slice_in_dim(x, start, size, axis=0)


def chunked_mask_loss(head_fn: Callable[[Any, jax.Array], jax.Array],
                      target_fn: Callable[[Any, jax.Array], jax.Array],
                      chunk: int, params, roi_feats, labels, weights, count,
                      target_args):
  """sum_i weights[i] * mean BCE(own-class logits_i, target_i), i < count.

  Args:
    head_fn: (params, (C, S, S, F) RoI features) -> (C, T, T, K) logits.
    target_fn: (target_args, (C,) slot indices) -> (C, T, T) {0, 1}
      targets of those slots (not differentiated).
    chunk: C, slots per loop iteration; the capacity must be a multiple
      (C == capacity: one chunk, computed without a loop).
    params: head_fn's parameters (differentiated).
    roi_feats: (N, S, S, F) RoI features (differentiated); with several
      chunks, the positives first.
    labels: (N,) int32 class of each slot (its logit channel).
    weights: (N,) float32 loss weight of each slot (0 for padding).
    count: int32 scalar, slots in use (the loop covers ceil(count / C)
      chunks; slots past `count` in the last chunk must have weight 0).
    target_args: pytree that target_fn reads.

  Returns:
    float32 scalar loss.
  """
  capacity = roi_feats.shape[0]
  if capacity % chunk:
    raise ValueError(f'mask RoI capacity {capacity} is not a multiple of '
                     f'the chunk {chunk}')

  def chunk_loss(p, x, lab, w, tgt):
    logits = head_fn(p, x)
    own = jnp.take_along_axis(logits, lab[:, None, None, None], axis=-1)
    bce = bce_with_logits(own[..., 0], tgt).mean(axis=(-1, -2))
    return jnp.sum(w * bce)

  def num_chunks(n):
    return (n + chunk - 1) // chunk

  def forward(p, feats, lab, w, n, targs):
    def body(state):
      i, loss, targets = state
      start = i * chunk
      tgt = jax.lax.stop_gradient(
          target_fn(targs, start + jnp.arange(chunk, dtype=jnp.int32)))
      loss = loss + chunk_loss(p, _chunk(feats, start, chunk),
                               _chunk(lab, start, chunk),
                               _chunk(w, start, chunk), tgt)
      targets = jax.lax.dynamic_update_slice_in_dim(
          targets, tgt.astype(targets.dtype), start, axis=0)
      return i + 1, loss, targets

    size = jax.eval_shape(lambda: target_fn(
        targs, jnp.zeros((chunk,), jnp.int32))).shape[1:]
    init = (jnp.int32(0), jnp.float32(0.0),
            jnp.zeros((capacity,) + size, jnp.float32))
    _, loss, targets = jax.lax.while_loop(lambda s: s[0] < num_chunks(n),
                                          body, init)
    return loss, targets

  if chunk == capacity:
    # One chunk: no loop, plain autodiff (the 'direct' strategy).
    targets = jax.lax.stop_gradient(
        target_fn(target_args, jnp.arange(capacity, dtype=jnp.int32)))
    return chunk_loss(params, roi_feats, labels.astype(jnp.int32),
                      weights.astype(jnp.float32), targets)

  @jax.custom_vjp
  def loss_fn(p, feats, lab, w, n, targs):
    return forward(p, feats, lab, w, n, targs)[0]

  def loss_fwd(p, feats, lab, w, n, targs):
    loss, targets = forward(p, feats, lab, w, n, targs)
    return loss, (p, feats, lab, w, n, targets)

  def loss_bwd(res, g):
    p, feats, lab, w, n, targets = res

    def body(state):
      i, grad_p, grad_feats = state
      start = i * chunk
      lab_c, w_c = _chunk(lab, start, chunk), _chunk(w, start, chunk)
      tgt_c = _chunk(targets, start, chunk)
      _, vjp = jax.vjp(lambda p_, x_: chunk_loss(p_, x_, lab_c, w_c, tgt_c),
                       p, _chunk(feats, start, chunk))
      d_p, d_x = vjp(g)
      grad_p = jax.tree_util.tree_map(jnp.add, grad_p, d_p)
      grad_feats = jax.lax.dynamic_update_slice_in_dim(
          grad_feats, d_x.astype(grad_feats.dtype), start, axis=0)
      return i + 1, grad_p, grad_feats

    init = (jnp.int32(0), jax.tree_util.tree_map(jnp.zeros_like, p),
            buffers.zeros_after(g, feats.shape, feats.dtype))
    _, grad_p, grad_feats = jax.lax.while_loop(
        lambda s: s[0] < num_chunks(n), body, init)
    return grad_p, grad_feats, None, None, None, None

  loss_fn.defvjp(loss_fwd, loss_bwd)
  return loss_fn(params, roi_feats, labels.astype(jnp.int32),
                 weights.astype(jnp.float32), jnp.asarray(count, jnp.int32),
                 target_args)
