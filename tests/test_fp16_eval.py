"""The FP16 row trains in float16 and evaluates in float32."""

import jax
import jax.numpy as jnp
import numpy as np

from maskrcnn_jax import config as config_lib
from maskrcnn_jax import predictor as predictor_lib
from maskrcnn_jax.models import build


def test_fp16_row_trains_in_float16_and_evaluates_in_float32():
  c = config_lib.load_config('configs/r50_fpn_fp16_1x.py')
  assert c.model.dtype == 'float16' and c.test.dtype == 'float32'
  # The training loop builds its model from the config as is.
  assert build.build_model(c).dtype == jnp.float16
  variables = jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype),
                                     build.abstract_variables(c))
  names = ['c'] * c.model.num_classes
  # The predictor behind eval.py, demo.py and the training loop's evaluator
  # (train_data.make_evaluator), with no --dtype given.
  assert predictor_lib.Predictor(c, variables, names).model.dtype == (
      jnp.float32)
  # --dtype still overrides it (the FP16-mode speed figure).
  assert predictor_lib.Predictor(c, variables, names,
                                 dtype='float16').model.dtype == jnp.float16
  # Rows without test.dtype evaluate in their model.dtype.
  bf16 = config_lib.load_config('configs/r50_fpn_1x.py',
                                ['model.dtype=bfloat16'])
  assert bf16.test.dtype == ''
  assert predictor_lib.Predictor(bf16, variables, names).model.dtype == (
      jnp.bfloat16)
