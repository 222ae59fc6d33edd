"""Initial variables: random, ImageNet backbone, or a detector to fine-tune."""

import dataclasses
import logging
import os
from typing import Optional, Sequence

import jax
import ml_collections
import numpy as np

from maskrcnn_jax import checkpoint as checkpoint_lib
from maskrcnn_jax import zoo
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


# train.init_backbone_from value that trains the backbone from random weights.
SCRATCH = 'none'


@dataclasses.dataclass(frozen=True)
class BackboneSource:
  """Where the ImageNet backbone weights come from.

  Attributes:
    name: the `train.init_backbone` name (e.g. 'torchvision://resnet50'), or
      '' for a file given by `train.init_backbone_from`.
    url: the URL the name resolves to (as mmengine resolves it), or ''.
    path: the local `.pth` file.
  """
  name: str
  url: str
  path: str

  def describe(self) -> str:
    if self.name:
      return f'{self.name} = {self.url} (local file {self.path})'
    return f'{self.path} (train.init_backbone_from)'


def backbone_source(config: ml_collections.ConfigDict
                    ) -> Optional[BackboneSource]:
  """Resolves (and downloads, once) the ImageNet backbone of `config`.

  `train.init_backbone_from`: '' (default) -> the weights MMDetection loads
  for `train.init_backbone` (zoo.get_imagenet_weights: downloaded into the
  cache once); 'none' -> None (backbone trained from random weights); else a
  local `.pth` file (torchvision, MSRA caffe or ResNeXt layout).

  Raises:
    ValueError: neither a name nor a choice (the message says what to set),
      or an unknown name.
    FileNotFoundError: the given file does not exist.
    zoo.WeightsUnavailableError: the download failed (one line naming the
      URL and `train.init_backbone_from=FILE`).
  """
  t = config.train
  given = (t.init_backbone_from or '').strip()
  if given.lower() == SCRATCH:
    return None
  if given:
    if not os.path.isfile(given):
      raise FileNotFoundError(
          f'train.init_backbone_from={given!r}: no such file (an ImageNet '
          f"backbone .pth, or 'none' to train the backbone from scratch)")
    return BackboneSource('', '', given)
  if not t.init_backbone:
    raise ValueError(
        f'{config.name}: train.init_backbone names no ImageNet weights; set '
        "train.init_backbone_from='none' to train the backbone from scratch "
        'or train.init_backbone_from=FILE to load a .pth')
  url, path = zoo.get_imagenet_weights(t.init_backbone)
  return BackboneSource(t.init_backbone, url, path)


def load_imagenet_backbone(variables, config: ml_collections.ConfigDict,
                           path: str):
  """`variables` with the backbone replaced by the ImageNet `.pth` at path.

  Strict: every backbone parameter and statistic must be in the file with
  the model's shape (the classifier `fc.*` is ignored).

  Raises:
    mmdet.CheckpointMismatchError: keys or shapes differ from the backbone.
  """
  state_dict, _ = pth.read_pth(path)
  abstract = build.abstract_variables(config)
  backbone = mmdet.backbone_state_dict_to_variables(
      state_dict, config, expected_backbone=abstract)
  out = {col: dict(tree) for col, tree in variables.items()}
  for col, tree in backbone.items():
    if tree or 'backbone' in out.get(col, {}):
      out.setdefault(col, {})['backbone'] = tree
  return out


def apply_backbone(variables, config: ml_collections.ConfigDict,
                   source: Optional[BackboneSource]):
  """The ImageNet backbone of `source` over `variables` (None: unchanged).

  Logs which weights were loaded (name, URL, local file), or that the
  backbone is trained from scratch.
  """
  if source is None:
    b = config.model.backbone
    log.info("backbone trained from scratch: random initialisation "
             "(train.init_backbone_from='none')")
    if b.frozen_stages >= 0 and b.get('norm', 'BN') == 'BN':
      frozen = ['the stem'] + [f'layer{i}'
                               for i in range(1, b.frozen_stages + 1)]
      log.warning('from scratch with model.backbone.frozen_stages=%d: %s '
                  'keep their random weights, and every BatchNorm its 0/1 '
                  'statistics', b.frozen_stages, ', '.join(frozen))
    return variables
  variables = load_imagenet_backbone(variables, config, source.path)
  log.info('ImageNet backbone: %s', source.describe())
  return variables


def initial_variables(config: ml_collections.ConfigDict,
                      class_names: Sequence[str]):
  """Variables to start training from (see train/loop.py for the order)."""
  t = config.train
  if len(class_names) != config.model.num_classes:
    raise ValueError(f'the dataset has {len(class_names)} classes but '
                     f'model.num_classes={config.model.num_classes}')
  if t.init_from:
    variables = jax.device_get(build.init_variables(
        config, jax.random.PRNGKey(t.seed)))
    log.info('fine-tuning from %s', t.init_from)
    return merge_detector(variables, load_detector_any(t.init_from, config))
  # Resolved (and downloaded) first: a missing file stops the run at once.
  source = backbone_source(config)
  variables = jax.device_get(build.init_variables(
      config, jax.random.PRNGKey(t.seed)))
  return apply_backbone(variables, config, source)
