"""Typed model settings: one dataclass per `config.model` group.

The fields ARE the config keys under `model.*` (`model.backbone.depth` is
`BackboneConfig.depth`), and `from_config(config.model)` builds them
directly: adding a model setting is one line in `config.base_config()` and
one field here (tests/test_configs.py checks that the base config and these
defaults agree). The `MaskRCNN` module takes them as fields.
"""

import dataclasses
import typing
from typing import Any, Mapping, Tuple, Type, TypeVar

T = TypeVar('T')


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
  """`model.backbone`: ResNet / ResNeXt."""
  depth: int = 50                 # 18, 34 (BasicBlock), 50, 101, 152
  groups: int = 1                 # ResNeXt cardinality; 1 = ResNet
  base_width: int = 4             # ResNeXt width per group
  style: str = 'pytorch'          # 'pytorch': stride on 3x3; 'caffe': 1x1
  frozen_stages: int = 1          # stem + layer1 frozen (training)
  norm_eval: bool = True          # BN always in inference mode
  norm_requires_grad: bool = True  # BN gamma/beta trainable (layers 2-4)
  norm_eps: float = 1e-5
  base_channels: int = 64         # stem / layer1 width
  norm: str = 'BN'                # 'BN' (frozen, norm_eval) | 'GN' (trainable)


@dataclasses.dataclass(frozen=True)
class NeckConfig:
  """`model.neck`: FPN."""
  in_channels: Tuple[int, ...] = (256, 512, 1024, 2048)
  out_channels: int = 256
  num_outs: int = 5
  norm: str = 'none'              # 'none' | 'GN' on every FPN conv


@dataclasses.dataclass(frozen=True)
class RPNConfig:
  """`model.rpn`: anchors and the RPN head."""
  feat_channels: int = 256
  anchor_strides: Tuple[int, ...] = (4, 8, 16, 32, 64)
  anchor_scales: Tuple[float, ...] = (8.0,)
  anchor_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)
  target_stds: Tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class RoIConfig:
  """`model.roi`: RoIAlign, box head and mask head."""
  featmap_strides: Tuple[int, ...] = (4, 8, 16, 32)
  finest_scale: int = 56
  box_roi_size: int = 7
  mask_roi_size: int = 14
  fc_channels: int = 1024
  num_shared_fcs: int = 2
  bbox_target_stds: Tuple[float, ...] = (0.1, 0.1, 0.2, 0.2)
  num_mask_convs: int = 4
  mask_channels: int = 256
  norm: str = 'none'              # 'none' | 'GN' on the mask head's convs
  roi_align_chunk: int = 16       # RoIs per RoIAlign chunk (see config.py)
  # 'auto' (per target: 'chunked' on CPU, 'tiered' on GPU/TPU; see
  # maskrcnn_jax/target.py), 'chunked', 'tiered' or 'dense' (small
  # canvases; needs the 'direct' mask loss). Same values.
  roi_align_strategy: str = 'auto'


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """`model`: the whole detector."""
  num_classes: int = 80
  dtype: str = 'float32'          # compute dtype
  # Training compute dtype: 'auto' = dtype, except that a float32 model
  # trains in bfloat16 on GPU/TPU targets (see build.train_dtype).
  train_dtype: str = 'auto'
  precision: str = 'highest'      # matmul/conv precision
  norm_groups: int = 32           # GroupNorm groups wherever a norm is 'GN'
  backbone: BackboneConfig = BackboneConfig()
  neck: NeckConfig = NeckConfig()
  rpn: RPNConfig = RPNConfig()
  roi: RoIConfig = RoIConfig()
  # NMS algorithm: 'auto' ('tiled' on CPU, 'dense' on GPU/TPU), 'tiled' or
  # 'dense'. Same result.
  nms_strategy: str = 'auto'


def _convert(value, hint, where: str):
  """A config value as the field's type (lists -> tuples, ints -> floats)."""
  if dataclasses.is_dataclass(hint):
    return from_config(hint, value, where)
  origin = typing.get_origin(hint)
  if origin is tuple:
    if not isinstance(value, (tuple, list)):
      raise ValueError(f'{where} must be a sequence, got {value!r}')
    (item, *_) = typing.get_args(hint)
    return tuple(_convert(v, item, where) for v in value)
  if hint is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if hint in (int, float, str, bool) and not isinstance(value, hint):
    raise ValueError(f'{where} must be {hint.__name__}, got {value!r}')
  return value


def from_config(cls: Type[T], node: Mapping[str, Any],
                where: str = 'model') -> T:
  """`cls` with every field read from the config node of the same keys.

  Raises:
    ValueError: a key of `node` that `cls` has no field for, or a value of
      the wrong type (naming `where.key`); missing keys take the defaults.
  """
  fields = {f.name: f for f in dataclasses.fields(cls)}
  hints = typing.get_type_hints(cls)
  unknown = sorted(set(node.keys()) - set(fields))
  if unknown:
    raise ValueError(f'unknown config key {where}.{unknown[0]} (the model '
                     f'has no such setting; {where} has '
                     f'{", ".join(sorted(fields))})')
  kwargs = {name: _convert(node[name], hints[name], f'{where}.{name}')
            for name in fields if name in node}
  return cls(**kwargs)
