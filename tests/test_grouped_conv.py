"""CPU-fast gradients: grouped and 1x1 convolutions (ops/grouped_conv.py),
the bias add and the stem max-pool (models/layers.py)."""

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax import target as target_lib
from maskrcnn_jax.models import layers
from maskrcnn_jax.ops import grouped_conv

DIMS = ('NHWC', 'HWIO', 'NHWC')


@pytest.mark.parametrize('stride,groups,cin,cout,hw,size', [
    (1, 32, 128, 128, (13, 21), 3),   # ResNeXt 32x4d layer1 width
    (2, 32, 64, 128, (17, 23), 3),    # stride 2 on odd sizes
    (2, 4, 8, 16, (9, 8), 3),
    (1, 1, 48, 24, (13, 21), 1),      # 1x1: one matmul
    (2, 1, 16, 40, (17, 23), 1),      # 1x1 stride 2 (downsample) on odd sizes
])
def test_values_and_gradients_equal_lax(stride, groups, cin, cout, hw, size):
  rng = np.random.default_rng(stride + groups)
  x = jnp.asarray(rng.standard_normal((2, *hw, cin)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((size, size, cin // groups, cout)),
                  jnp.float32)
  pad = ((size // 2, size // 2),) * 2
  prec = lax.Precision.HIGHEST

  def ref(x, k):
    return lax.conv_general_dilated(x, k, (stride, stride), pad,
                                    dimension_numbers=DIMS,
                                    feature_group_count=groups,
                                    precision=prec)

  def ours(x, k):
    return grouped_conv.grouped_conv(x, k, (stride, stride), pad, groups,
                                     prec)

  np.testing.assert_array_equal(ours(x, k), ref(x, k))
  cot = jnp.asarray(rng.standard_normal(ref(x, k).shape), jnp.float32)
  loss = lambda f: lambda x, k: jnp.sum(f(x, k) * cot)
  (dx_ref, dk_ref) = jax.grad(loss(ref), (0, 1))(x, k)
  (dx, dk) = jax.grad(loss(ours), (0, 1))(x, k)
  np.testing.assert_array_equal(dx, dx_ref)   # XLA's own input gradient
  scale = float(jnp.max(jnp.abs(dk_ref)))
  np.testing.assert_allclose(dk / scale, dk_ref / scale, atol=2e-6)


def _kernel_grad_hlo(strategy, monkeypatch, kernel=3, groups=32):
  monkeypatch.setitem(target_lib._DEFAULTS['conv_kernel_grad'],
                      'cpu', strategy)
  conv = layers.conv(64, kernel, groups=groups,
                     precision=lax.Precision.HIGHEST)
  x = jnp.zeros((1, 16, 16, 64))
  params = conv.init(jax.random.PRNGKey(0), x)
  grad = jax.grad(lambda p: jnp.sum(conv.apply(p, x) ** 2))
  return jax.jit(grad).lower(params).compile().as_text()


def _convolutions(hlo):
  return [l for l in hlo.splitlines() if ' convolution(' in l]


def test_cpu_target_computes_the_kernel_gradient_with_matmuls(monkeypatch):
  """XLA writes the kernel gradient as a batch_group_count convolution,
  which XLA:CPU runs on a naive path (seconds per ResNeXt layer); with the
  'sliced' strategy, the CPU default, the only convolution left in the
  program is the forward one."""
  monkeypatch.setenv(target_lib.ENV, 'cpu')
  assert grouped_conv.resolve_strategy() == 'sliced'
  sliced = _kernel_grad_hlo('sliced', monkeypatch)
  assert len(_convolutions(sliced)) == 1
  assert 'feature_group_count=32' in _convolutions(sliced)[0]
  assert ' dot(' in sliced
  assert len(_convolutions(_kernel_grad_hlo('xla', monkeypatch))) == 2
  # A 1x1 convolution's kernel gradient becomes a single matmul.
  assert len(_convolutions(_kernel_grad_hlo('xla', monkeypatch, 1, 1))) == 1
  assert not _convolutions(_kernel_grad_hlo('sliced', monkeypatch, 1, 1))
  monkeypatch.setenv(target_lib.ENV, 'gpu')
  assert grouped_conv.resolve_strategy() == 'xla'
  with pytest.raises(ValueError, match="'sliced'"):
    grouped_conv.resolve_strategy('im2col')


def test_flax_conv_with_other_settings_falls_back_to_lax():
  conv = nn.Conv(8, (3, 3), padding='SAME', feature_group_count=4,
                 kernel_dilation=(2, 2),
                 conv_general_dilated_cls=
                 grouped_conv.conv_general_dilated_factory)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 9, 9, 8)),
                  jnp.float32)
  params = conv.init(jax.random.PRNGKey(0), x)
  plain = nn.Conv(8, (3, 3), padding='SAME', feature_group_count=4,
                  kernel_dilation=(2, 2))
  np.testing.assert_array_equal(conv.apply(params, x), plain.apply(params, x))


def test_add_bias_gradient_is_autodiffs():
  """layers.add_bias (the mask head deconv's bias): a matrix-vector product
  for the bias gradient, the same values as autodiff of x + b; no
  reduce-window in the compiled CPU gradient; no rows at all works too."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(5, 3, 4, 2, 2, 6)), jnp.float32)
  b = jnp.asarray(rng.normal(size=6), jnp.float32)
  cot = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  ours = jax.jit(jax.grad(lambda x, b: jnp.sum(layers.add_bias(x, b) * cot),
                          (0, 1)))
  ref = jax.grad(lambda x, b: jnp.sum((x + b) * cot), (0, 1))
  for g, want in zip(ours(x, b), ref(x, b)):
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5)
  assert 'reduce-window' not in ours.lower(x, b).compile().as_text()
  empty = jnp.zeros((0, 14, 14, 6))
  np.testing.assert_array_equal(
      jax.grad(lambda b: jnp.sum(layers.add_bias(empty, b)))(b), np.zeros(6))


@pytest.mark.parametrize('shape', [(2, 12, 16, 3), (1, 7, 9, 2)])
def test_max_pool_gradient_goes_to_the_first_maximum_as_torch(shape):
  """layers.max_pool_3x3_s2's own backward (nine strided taps): values and
  gradients of torch's max_pool2d(3, 2, 1), ties included (ReLU zeros and
  equal maxima: the first in row-major window order takes it)."""
  import torch  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  x = np.maximum(rng.normal(size=shape), 0).astype(np.float32)
  x[0, 0, 0, 0] = x[0, 0, 1, 0] = x[0, 1, 0, 0] = x[0, 1, 1, 0] = 3.0
  y = layers.max_pool_3x3_s2(jnp.asarray(x))
  cot = rng.normal(size=y.shape).astype(np.float32)
  g = jax.jit(jax.grad(lambda v: jnp.sum(layers.max_pool_3x3_s2(v) * cot)))(
      jnp.asarray(x))
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_(True)
  yt = torch.nn.functional.max_pool2d(xt, 3, 2, 1)
  (yt * torch.from_numpy(cot).permute(0, 3, 1, 2)).sum().backward()
  np.testing.assert_array_equal(y, yt.detach().permute(0, 2, 3, 1).numpy())
  np.testing.assert_allclose(g, xt.grad.permute(0, 2, 3, 1).numpy(),
                             rtol=1e-6, atol=1e-6)
