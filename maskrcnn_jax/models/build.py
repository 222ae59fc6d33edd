"""Builds a `MaskRCNN` from a config (`config.model` through the typed
sub-configs of `model_config`)."""

from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections

from maskrcnn_jax import target as target_lib
from maskrcnn_jax.models import mask_rcnn
from maskrcnn_jax.models import model_config as model_config_lib
from maskrcnn_jax.models import resnet

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16,
           'float16': jnp.float16}
_PRECISIONS = {'default': None, 'high': jax.lax.Precision.HIGH,
               'highest': jax.lax.Precision.HIGHEST}


def compute_dtype(name: str):
  if name not in _DTYPES:
    raise ValueError(f'model.dtype must be one of {sorted(_DTYPES)}, '
                     f'got {name!r}')
  return _DTYPES[name]


def train_dtype(config: ml_collections.ConfigDict) -> str:
  """Training compute dtype: model.train_dtype; 'auto' is model.dtype, except
  that a float32 model trains in bfloat16 on GPU/TPU targets."""
  m = model_config(config)
  value = m.train_dtype
  if value == 'auto':
    value = m.dtype
    if value == 'float32':
      value = target_lib.resolve('train_dtype', 'auto') or value
  compute_dtype(value)
  return value


def test_config(config: ml_collections.ConfigDict) -> mask_rcnn.TestConfig:
  t = config.test
  return mask_rcnn.TestConfig(
      rpn_nms_pre=t.rpn_nms_pre, rpn_max_per_img=t.rpn_max_per_img,
      rpn_nms_iou=t.rpn_nms_iou, rpn_min_bbox_size=t.rpn_min_bbox_size,
      score_thr=t.score_thr, nms_iou=t.nms_iou, max_per_img=t.max_per_img,
      max_candidates=t.max_candidates)


def input_config(config: ml_collections.ConfigDict) -> mask_rcnn.InputConfig:
  i = config.input
  return mask_rcnn.InputConfig(mean=tuple(i.mean), std=tuple(i.std),
                               bgr_to_rgb=bool(i.bgr_to_rgb))


def model_config(config: ml_collections.ConfigDict
                 ) -> model_config_lib.ModelConfig:
  """The typed `config.model` (fields = config keys; see model_config)."""
  return model_config_lib.from_config(model_config_lib.ModelConfig,
                                      config.model)


def build_model(config: ml_collections.ConfigDict,
                dtype: Optional[str] = None) -> mask_rcnn.MaskRCNN:
  """MaskRCNN module for `config` (compute dtype overridable)."""
  target_lib.emulate_target_lowering()
  m = model_config(config)
  if m.precision not in _PRECISIONS:
    raise ValueError(f'model.precision must be one of {sorted(_PRECISIONS)},'
                     f' got {m.precision!r}')
  base = m.backbone.base_channels
  e = resnet.expansion(m.backbone.depth)
  if m.neck.in_channels != tuple(e * base * 2 ** i for i in range(4)):
    raise ValueError(f'model.neck.in_channels {m.neck.in_channels} does '
                     f'not match the backbone of depth {m.backbone.depth} '
                     f'({e} * {base} * 2**i)')
  return mask_rcnn.MaskRCNN(
      num_classes=m.num_classes, backbone_cfg=m.backbone, neck_cfg=m.neck,
      rpn_cfg=m.rpn, roi_cfg=m.roi, nms_strategy=m.nms_strategy,
      input_cfg=input_config(config), test_cfg=test_config(config),
      dtype=compute_dtype(dtype or m.dtype),
      precision=_PRECISIONS[m.precision], norm_groups=m.norm_groups)


def _dummy_inputs(batch: int = 1, size: int = 64):
  return (jnp.zeros((batch, size, size, 3), jnp.uint8),
          jnp.full((batch, 2), size, jnp.int32),
          jnp.full((batch, 2), size, jnp.int32))


def init_variables(config: ml_collections.ConfigDict, rng: jax.Array):
  """Randomly initialised variables {'params', 'batch_stats'}.

  `model.init` is jitted: one compiled program (cached by the persistent
  compilation cache when one is configured) instead of hundreds of eager
  op-by-op dispatches (16-26 s for ResNet-50 on 2 CPU cores), compiled
  without LLVM optimisation on CPUs.
  """
  model = build_model(config)
  inputs = _dummy_inputs()
  init = jax.jit(model.init)
  if jax.default_backend() == 'cpu' and not isinstance(rng, jax.core.Tracer):
    # A program that runs once: LLVM's optimisations are not worth their
    # compile time (quick start: 13 -> 5.5 s; the random values then
    # differ from the optimised program's by float32 round-off at most).
    # (Under jax.eval_shape, rng is a tracer and nothing is compiled.)
    init = init.lower(rng, *inputs).compile(
        compiler_options={'xla_backend_optimization_level': 0})
  variables = dict(init(rng, *inputs))
  variables.setdefault('batch_stats', {})  # none when every norm is GN
  return variables


def abstract_variables(config: ml_collections.ConfigDict):
  """Shapes/dtypes (jax.ShapeDtypeStruct) of the model's variables."""
  model = build_model(config)
  variables = dict(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                     *_dummy_inputs())))
  variables.setdefault('batch_stats', {})  # none when every norm is GN
  return variables
