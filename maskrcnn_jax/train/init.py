"""Initial variables: random, ImageNet backbone, or a detector to fine-tune."""

import logging
from typing import Sequence

import jax
import ml_collections
import numpy as np

from maskrcnn_jax import checkpoint as checkpoint_lib
from maskrcnn_jax.convert import mmdet
from maskrcnn_jax.convert import pth
from maskrcnn_jax.models import build

log = logging.getLogger(__name__)

# Layers whose shape depends on the number of classes (re-initialised when
# fine-tuning on a dataset with another class count).
CLASS_DEPENDENT = (('roi_head', 'bbox_head', 'fc_cls'),
                   ('roi_head', 'bbox_head', 'fc_reg'),
                   ('roi_head', 'mask_head', 'conv_logits'))


def _flat(tree):
  return {tuple(k.key for k in path): v
          for path, v in jax.tree_util.tree_leaves_with_path(tree)}


def _unflat(flat):
  out = {}
  for path, v in flat.items():
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return out


def merge_detector(random_vars, loaded_vars):
  """Loaded weights over random ones; class-dependent layers may differ.

  Raises:
    ValueError listing keys that are missing, unexpected or mis-shaped
    outside the class-dependent layers.
  """
  rand, got = _flat(random_vars), _flat(loaded_vars)
  out, problems, reinit = {}, [], []
  for path, value in rand.items():
    head = any(path[1:1 + len(p)] == p for p in CLASS_DEPENDENT)
    if path not in got:
      problems.append(f'missing {"/".join(path)}')
    elif np.shape(got[path]) != np.shape(value):
      if head:
        reinit.append('/'.join(path))
        out[path] = value
        continue
      problems.append(f'shape {"/".join(path)}: checkpoint '
                      f'{np.shape(got[path])} vs model {np.shape(value)}')
    else:
      out[path] = np.asarray(got[path])
  problems += [f'unexpected {"/".join(p)}' for p in got if p not in rand]
  if problems:
    raise ValueError('cannot initialise from the checkpoint:\n  ' +
                     '\n  '.join(problems))
  if reinit:
    log.warning('re-initialised class-dependent layers (class count '
                'differs): %s', ', '.join(reinit))
  return _unflat(out)


def load_detector_any(path: str, config):
  """Variables of a detector .pth or converted dir, without class checks
  (`checkpoint.load_detector_variables`, the one loader of both kinds)."""
  variables, _ = checkpoint_lib.load_detector_variables(
      path, config, check_classes=False)
  return variables


def initial_variables(config: ml_collections.ConfigDict,
                      class_names: Sequence[str]):
  """Variables to start training from (see train/loop.py for the order)."""
  t = config.train
  if len(class_names) != config.model.num_classes:
    raise ValueError(f'the dataset has {len(class_names)} classes but '
                     f'model.num_classes={config.model.num_classes}')
  variables = jax.device_get(build.init_variables(
      config, jax.random.PRNGKey(t.seed)))
  if t.init_from:
    log.info('fine-tuning from %s', t.init_from)
    return merge_detector(variables, load_detector_any(t.init_from, config))
  if t.init_backbone_from:
    log.info('backbone from %s', t.init_backbone_from)
    state_dict, _ = pth.read_pth(t.init_backbone_from)
    abstract = build.abstract_variables(config)
    backbone = mmdet.backbone_state_dict_to_variables(
        state_dict, config, expected_backbone=abstract)
    for col in ('params', 'batch_stats'):
      variables[col]['backbone'] = backbone[col]['backbone'] if (
          'backbone' in backbone[col]) else backbone[col]
  return variables
