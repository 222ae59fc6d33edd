"""Checkpoint conversion: MMDetection `.pth` files -> Flax variables.

    convert.convert_checkpoint(config, 'X.pth', 'DIR')

writes an inference checkpoint (see `maskrcnn_jax.checkpoint`); the command
`maskrcnn-convert --config CONFIG --checkpoint X.pth --out DIR` (or
`python -m maskrcnn_jax.convert`) calls it.

Nothing here imports torch: `read_pth` reads both `.pth` formats (zip and
legacy) with numpy and a restricted unpickler (`convert/pth.py`).
"""

from maskrcnn_jax.convert.converter import ConversionResult
from maskrcnn_jax.convert.converter import convert_checkpoint
from maskrcnn_jax.convert.mmdet import backbone_state_dict_to_variables
from maskrcnn_jax.convert.mmdet import check_variables
from maskrcnn_jax.convert.mmdet import CheckpointMismatchError
from maskrcnn_jax.convert.mmdet import class_names_from_meta
from maskrcnn_jax.convert.mmdet import conversion_plan
from maskrcnn_jax.convert.mmdet import count_parameters
from maskrcnn_jax.convert.mmdet import state_dict_to_variables
from maskrcnn_jax.convert.mmdet import variables_to_state_dict
from maskrcnn_jax.convert.pth import CheckpointFormatError
from maskrcnn_jax.convert.pth import read_pth

__all__ = [
    'backbone_state_dict_to_variables', 'check_variables',
    'CheckpointFormatError', 'CheckpointMismatchError',
    'class_names_from_meta', 'ConversionResult', 'conversion_plan',
    'convert_checkpoint', 'count_parameters',
    'read_pth', 'state_dict_to_variables', 'variables_to_state_dict',
]
