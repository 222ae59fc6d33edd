"""Shared configuration base for every model-zoo row, and config loading.

Each file in `configs/` is a thin `get_config()` that starts from
`base_config()` and changes the few fields its MMDetection row changes
(backbone, normalisation, schedule, training scales).

Conventions that hold across the whole project:
  * `model.num_classes` counts foreground classes only (80 for COCO); the box
    classifier has `num_classes + 1` outputs with background LAST, as in
    MMDetection >= 2.0.
  * Boxes are XYXY in absolute pixels; images are NHWC.
"""

import ast
import difflib
import importlib.util
import json
import os
import sys
from typing import List, Optional, Sequence, Tuple

import ml_collections

from maskrcnn_jax import errors

# Normalisation of each backbone style (MMDetection `DetDataPreprocessor`).
PYTORCH_STYLE_INPUT = dict(
    mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), bgr_to_rgb=True)
CAFFE_STYLE_INPUT = dict(
    mean=(103.530, 116.280, 123.675), std=(1.0, 1.0, 1.0), bgr_to_rgb=False)
# Detectron2/FAIR ResNeXt-101-32x8d weights: BGR input with a std.
CAFFE2_X101_INPUT = dict(
    mean=(103.530, 116.280, 123.675), std=(57.375, 57.120, 58.395),
    bgr_to_rgb=False)

# Short sides of the "choice of 6" multi-scale recipe (RandomChoiceResize).
MS_CHOICE_SHORT_SIDES = (640, 672, 704, 736, 768, 800)

# Bounds of the "range" multi-scale recipe (RandomResize): short side uniform
# integer in [640, 800], long side <= 1333.
MS_RANGE_SCALES = ((1333, 640), (1333, 800))

MMDET_URL_ROOT = 'https://download.openmmlab.com/mmdetection/v2.0'


def base_config() -> ml_collections.ConfigDict:
  """R-50-FPN pytorch-style 1x recipe; every row derives from this."""
  c = ml_collections.ConfigDict()
  c.name = 'r50_fpn_1x'

  # Where the row comes from (filled by each row file).
  c.mmdet = ml_collections.ConfigDict(dict(
      config='mask-rcnn_r50_fpn_1x_coco.py',
      checkpoint='',
      url='',
      box_ap=0.0,
      mask_ap=0.0,
  ))

  c.model = ml_collections.ConfigDict(dict(
      num_classes=80,
      # Compute dtype: 'float32' (reference parity), 'bfloat16' or 'float16';
      # evaluation and inference use test.dtype when that is set.
      dtype='float32',
      # Training compute dtype: 'auto' = model.dtype, but a float32 model
      # trains in bfloat16 on GPU/TPU targets (losses, box decoding and NMS
      # stay float32); or a dtype ('float32' for float32 training anywhere).
      train_dtype='auto',
      # Matmul/conv precision: 'highest' keeps float32 exact on GPUs/TPUs
      # (no TF32); 'default' lets XLA pick faster, less precise passes.
      precision='highest',
      # GroupNorm groups wherever a part's norm is 'GN' (MMDetection
      # norm_cfg=dict(type='GN', num_groups=32, requires_grad=True)).
      norm_groups=32,
      backbone=dict(
          depth=50,            # 18, 34 (BasicBlock), 50, 101 or 152
          groups=1,            # ResNeXt cardinality; 1 = ResNet
          base_width=4,        # ResNeXt width per group
          style='pytorch',     # 'pytorch': stride on 3x3; 'caffe': on first 1x1
          frozen_stages=1,     # stem + layer1 frozen
          norm_eval=True,      # BN always in inference mode
          norm_requires_grad=True,  # BN gamma/beta trainable (layers 2-4)
          norm_eps=1e-5,
          base_channels=64,    # stem / layer1 width (64 in every zoo row)
          norm='BN',           # 'BN' (frozen, norm_eval) | 'GN' (trainable)
      ),
      neck=dict(
          in_channels=(256, 512, 1024, 2048),
          out_channels=256,
          num_outs=5,
          norm='none',         # 'none' | 'GN' on every FPN conv
      ),
      rpn=dict(
          feat_channels=256,
          anchor_strides=(4, 8, 16, 32, 64),
          anchor_scales=(8.0,),
          anchor_ratios=(0.5, 1.0, 2.0),
          target_stds=(1.0, 1.0, 1.0, 1.0),
      ),
      roi=dict(
          featmap_strides=(4, 8, 16, 32),
          finest_scale=56,
          box_roi_size=7,
          mask_roi_size=14,
          fc_channels=1024,
          num_shared_fcs=2,
          bbox_target_stds=(0.1, 0.1, 0.2, 0.2),
          num_mask_convs=4,
          mask_channels=256,
          norm='none',         # 'none' | 'GN' on the mask head's convs
          # RoIs are processed in chunks of this many; each chunk picks the
          # smallest exact gather window that covers its RoIs (results do
          # not depend on it). Small chunks fit the windows tightly (best on
          # CPUs: 16 -> 1.75 s/image vs 1.97 s at 128); on accelerators,
          # larger chunks (128-512) cut the sequential chunk loop.
          roi_align_chunk=16,
          # 'auto' (per target, see maskrcnn_jax/target.py: 'chunked' on
          # CPU, 'tiered' on GPU/TPU), 'chunked', 'tiered' or 'dense' (small
          # canvases only, e.g. the quick start's; trains with the 'direct'
          # mask loss). Same values.
          roi_align_strategy='auto',
      ),
      # NMS algorithm: 'auto' ('tiled' on CPU, 'dense' on GPU/TPU),
      # 'tiled' or 'dense'. Same result.
      nms_strategy='auto',
  ))

  # Input pipeline shared by test and train.
  c.input = ml_collections.ConfigDict(dict(
      mean=PYTORCH_STYLE_INPUT['mean'],
      std=PYTORCH_STYLE_INPUT['std'],
      bgr_to_rgb=PYTORCH_STYLE_INPUT['bgr_to_rgb'],
      test_scale=(1333, 800),   # (long, short) keep-ratio resize bound
      size_divisor=32,
      # Fixed padded canvases (H, W); an image goes onto the first that fits.
      canvases=((800, 1344), (1344, 800)),
  ))

  # MMDetection test_cfg.
  c.test = ml_collections.ConfigDict(dict(
      rpn_nms_pre=1000,
      rpn_max_per_img=1000,
      rpn_nms_iou=0.7,
      rpn_min_bbox_size=0.0,
      score_thr=0.05,
      nms_iou=0.5,
      max_per_img=100,
      mask_thr_binary=0.5,
      # Class-wise NMS runs on the best `max_candidates` (roi, class) pairs
      # above score_thr; exact whenever fewer candidates pass score_thr, or
      # when max_per_img boxes survive among them.
      max_candidates=4096,
      # Compute dtype of evaluation/inference; '' = model.dtype.
      dtype='',
  ))

  # MMDetection train_cfg and data recipe.
  c.train = ml_collections.ConfigDict(dict(
      # Data augmentation.
      scale_mode='fixed',        # 'fixed' | 'choice' | 'range'
      scales=((1333, 800),),     # (long, short); 'range' uses [min, max] short
      flip_prob=0.5,
      mask_format='bitmap',      # 'bitmap' (poly2mask) | 'polygon'
      max_instances=100,         # GT instances per image (padded)
      max_ignored=32,            # crowd boxes per image (padded)
      mask_crop=112,             # compact GT mask grid (see data.transforms)
      # 28x28 mask targets: 'auto' = 'exact' (MMDetection's roi_align of the
      # full bitmap, bit-packed canvas bitmaps) for bitmap recipes and
      # 'compact' (from the mask_crop grids) for polygon recipes.
      mask_target='auto',
      max_polygon_vertices=256,  # polygon recipes: padded vertex count
      # RPN targets.
      rpn_pos_iou=0.7,
      rpn_neg_iou=0.3,
      rpn_min_pos_iou=0.3,
      rpn_num_samples=256,
      rpn_pos_fraction=0.5,
      rpn_proposal_nms_pre=2000,
      rpn_proposal_max_per_img=1000,
      rpn_proposal_nms_iou=0.7,
      # R-CNN targets.
      rcnn_pos_iou=0.5,
      rcnn_neg_iou=0.5,
      rcnn_min_pos_iou=0.5,
      rcnn_num_samples=512,
      rcnn_pos_fraction=0.25,
      mask_size=28,
      # Mask loss: 'auto' (per target: 'direct' on CPU, 'looped' on
      # GPU/TPU), 'direct' (mask head on every mask slot at once) or
      # 'looped' (only the real positives, mask_chunk RoIs per loop
      # iteration). Same loss either way.
      mask_loss_strategy='auto',
      mask_chunk=64,
      # Optimisation (SGD, linear scaling from a global batch of 16).
      global_batch_size=16,
      base_lr=0.02,
      base_batch_size=16,
      scale_lr=True,
      momentum=0.9,
      weight_decay=1e-4,
      # mmengine LinearLR(start_factor=warmup_ratio, begin=0,
      # end=warmup_iters) by iteration: full rate at warmup_iters - 1.
      warmup_iters=500,
      warmup_ratio=0.001,
      epochs=12,
      milestones=(8, 11),        # 0-based epochs after which lr *= 0.1
      dataset_repeats=1,         # RepeatDataset(times) of the 3x recipes
      # Mixed precision: loss scale for float16: 'dynamic' or a number as a
      # string (e.g. '512', MMDetection 2.x's static scale).
      loss_scale='dynamic',
      # ImageNet weights MMDetection initialises the backbone from (its
      # init_cfg checkpoint name); resolved to mmengine's URL and downloaded
      # once (maskrcnn_jax.zoo.get_imagenet_weights).
      init_backbone='torchvision://resnet50',
      # '' = the init_backbone weights; a local ImageNet backbone .pth; or
      # 'none' = train the backbone from random weights.
      init_backbone_from='',
      init_from='',              # detector .pth / converted dir to fine-tune
      seed=0,
      images_per_group=2,        # MMDetection samples_per_gpu (loss groups)
      deterministic_max_mask_rois=512,
      log_every=20,
      checkpoint_every=1000,
      keep_checkpoints=3,
      eval_every=0,              # steps; 0: evaluate only at the end
      num_workers=2,
  ))

  # COCO 2017 by default.
  c.data = ml_collections.ConfigDict(dict(
      root='data/coco',
      train_ann='data/coco/annotations/instances_train2017.json',
      train_images='data/coco/train2017',
      val_ann='data/coco/annotations/instances_val2017.json',
      val_images='data/coco/val2017',
      # dict(num_train, num_val, image_size, seed): generate a synthetic
      # set under `root` on first use (configs/quickstart.py).
      synthetic=None,
  ))
  return c


def set_backbone(c: ml_collections.ConfigDict, *, depth: int, groups: int = 1,
                 base_width: int = 4, style: str = 'pytorch',
                 norm_requires_grad: bool = True,
                 input_norm: Optional[dict] = None,
                 init_backbone: str = '') -> ml_collections.ConfigDict:
  """Sets backbone, its input normalisation and its ImageNet init in place."""
  b = c.model.backbone
  b.depth, b.groups, b.base_width, b.style = depth, groups, base_width, style
  b.norm_requires_grad = norm_requires_grad
  norm = input_norm or (CAFFE_STYLE_INPUT if style == 'caffe'
                        else PYTORCH_STYLE_INPUT)
  c.input.mean, c.input.std = norm['mean'], norm['std']
  c.input.bgr_to_rgb = norm['bgr_to_rgb']
  if init_backbone:
    c.train.init_backbone = init_backbone
  return c


def set_schedule(c: ml_collections.ConfigDict, epochs: int,
                 milestones: Sequence[int],
                 repeats: int = 1) -> ml_collections.ConfigDict:
  """Epoch-based MultiStepLR schedule, optionally over a RepeatDataset."""
  c.train.epochs = epochs
  c.train.milestones = tuple(milestones)
  c.train.dataset_repeats = repeats
  return c


def set_train_scales(c: ml_collections.ConfigDict,
                     mode: str) -> ml_collections.ConfigDict:
  """Sets the training resize recipe: 'fixed', 'choice' or 'range'.

  'fixed': (1333, 800). 'choice': RandomChoiceResize over
  MS_CHOICE_SHORT_SIDES (2.x multiscale_mode='value'). 'range': RandomResize
  with the short side uniform in [640, 800] (2.x multiscale_mode='range').
  """
  if mode == 'fixed':
    scales = ((1333, 800),)
  elif mode == 'choice':
    scales = tuple((1333, s) for s in MS_CHOICE_SHORT_SIDES)
  elif mode == 'range':
    scales = MS_RANGE_SCALES
  else:
    raise ValueError(
        f"unknown scale mode {mode!r}: 'fixed', 'choice' or 'range'")
  c.train.scale_mode, c.train.scales = mode, scales
  return c


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """Applies 'a.b.c=value' strings in place; values parsed as Python literals.

  Raises:
    KeyError: a key does not exist (the message names it and suggests
      close matches).
    ValueError: malformed override or a value of the wrong type.
  """
  for item in overrides:
    if '=' not in item:
      raise ValueError(f'config override {item!r} is not of the form '
                       'key=value')
    key, raw = item.split('=', 1)
    key = key.strip()
    if key.startswith('config.'):
      key = key[len('config.'):]
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    *parents, leaf = key.split('.')
    node = config
    for depth, name in enumerate(parents + [leaf]):
      if name not in node:
        prefix = '.'.join(parents[:depth])
        close = difflib.get_close_matches(name, list(node.keys()), n=3,
                                          cutoff=0.4)
        close = ['.'.join(parents[:depth] + [c]) for c in close]
        hint = f'; did you mean {", ".join(close)}?' if close else ''
        raise KeyError(f'unknown config key {key!r} (no {name!r} in '
                       f'{prefix or "config"}){hint}')
      if depth < len(parents):
        node = node[name]
    current = node[leaf]
    if isinstance(current, (tuple, list)) and isinstance(value, list):
      value = tuple(value)
    if isinstance(current, float) and isinstance(value, int) and not (
        isinstance(value, bool)):
      value = float(value)
    try:
      node[leaf] = value
    except TypeError as e:
      raise ValueError(f'config override {key}={raw!r}: {e}') from None
  return config


def configs_dir() -> str:
  """The folder of the shipped configs (one file per model-zoo row).

  Installed, they are the package data `maskrcnn_jax/configs`; in a source
  checkout, the repository's `configs/` beside the package.
  """
  spec = importlib.util.find_spec('maskrcnn_jax.configs')
  if spec is not None and spec.submodule_search_locations:
    return list(spec.submodule_search_locations)[0]
  return os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), 'configs')


def config_names() -> List[str]:
  """Names of the shipped configs (`r50_fpn_1x`, ..., `quickstart`)."""
  return sorted(os.path.splitext(f)[0] for f in os.listdir(configs_dir())
                if f.endswith('.py') and not f.startswith('_'))


def resolve_config_path(name_or_path: str) -> str:
  """A config file path, or the shipped config of that row name (also for
  'configs/<name>.py' where no such file is under the current folder).

  Raises:
    FileNotFoundError: neither a file nor a shipped config name.
  """
  path = os.fspath(name_or_path)
  if os.path.isfile(path):
    return path
  name = os.path.splitext(os.path.basename(path))[0]
  shipped = os.path.join(configs_dir(), name + '.py')
  # A bare name, or the repository's 'configs/<name>.py' used elsewhere.
  parent = os.path.dirname(os.path.normpath(path))
  if (parent in ('', 'configs') and
      os.path.splitext(path)[1] in ('', '.py') and os.path.isfile(shipped)):
    return shipped
  close = difflib.get_close_matches(name, config_names(), n=3)
  hint = f'; did you mean {", ".join(close)}?' if close else (
      f'; shipped configs: {", ".join(config_names())}')
  raise FileNotFoundError(f'config file not found: {path} (neither a file '
                          f'nor a shipped config name){hint}')


def split_config_flags(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
  """Splits `--config.a.b=value` (or `--config.a.b value`) out of argv.

  The one override syntax of every command (as train.py's absl flags).

  Returns:
    (the other arguments, ['a.b=value', ...]).
  """
  rest, overrides = [], []
  argv = list(argv)
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith('--config.'):
      key = arg[len('--config.'):]
      if '=' in key:
        overrides.append(key)
      elif i + 1 < len(argv):
        overrides.append(f'{key}={argv[i + 1]}')
        i += 1
      else:
        raise ValueError(f'{arg} needs a value ({arg}=VALUE)')
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def add_override_argument(parser) -> None:
  """--config-override KEY=VALUE (deprecated alias of --config.KEY=VALUE)."""
  parser.add_argument('--config-override', action='append', default=[],
                      metavar='KEY=VALUE',
                      help='deprecated alias of --config.KEY=VALUE, which '
                           'overrides a config field (e.g. '
                           '--config.test.score_thr=0.1)')


_CONFIG_HELP = 'config file or row name, e.g. configs/r50_fpn_1x.py or r50_fpn_1x'


def add_model_arguments(parser, *, config_required: bool = False,
                        checkpoint_help: str = 'MMDetection .pth or '
                                               'checkpoint directory',
                        dtype: bool = False) -> None:
  """The model arguments every command shares.

  --config (required, or by default the config stored in the checkpoint
  directory), --checkpoint, with `dtype` --dtype, and the deprecated
  --config-override alias. Parse with `parse_known_config_args`.
  """
  parser.add_argument(
      '--config', required=config_required, default=None,
      help=_CONFIG_HELP if config_required else
      _CONFIG_HELP + ' (default: the config stored in the checkpoint '
      'directory)')
  parser.add_argument('--checkpoint', required=True, help=checkpoint_help)
  if dtype:
    parser.add_argument('--dtype', default=None,
                        choices=['float32', 'bfloat16', 'float16'],
                        help='compute dtype (default: the config\'s)')
  add_override_argument(parser)


def parse_config_args(parser, argv: Optional[Sequence[str]]):
  """(namespace, overrides): `--config.a.b=v` flags split out of argv (or
  sys.argv[1:]), the rest parsed by `parser`; overrides include the
  deprecated --config-override values."""
  argv = sys.argv[1:] if argv is None else list(argv)
  argv, overrides = split_config_flags(argv)
  args = parser.parse_args(argv)
  return args, overrides + list(getattr(args, 'config_override', []))


def _tuples(x):
  """Lists -> tuples, recursively (configs use tuples; JSON gives lists)."""
  if isinstance(x, dict):
    return {k: _tuples(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return tuple(_tuples(v) for v in x)
  return x


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  """The resolved config as a JSON-serialisable dict (tuples as lists)."""
  return json.loads(config.to_json())


def config_from_dict(d: dict, lock: bool = True
                     ) -> ml_collections.ConfigDict:
  """Inverse of `config_to_dict` (lists back to tuples), locked."""
  config = ml_collections.ConfigDict(_tuples(d))
  if lock:
    config.lock()
  return config


def check_config_flags(args: Sequence[str]) -> Optional[str]:
  """Explains a failed `--config=FILE --config.a.b=v` (absl) command line.

  Returns a one-line message (config file missing or broken, unknown key
  with the closest valid names, bad value), None if no problem is found.
  """
  path, overrides, args = None, [], list(args)
  for i, a in enumerate(args):
    nxt = args[i + 1] if i + 1 < len(args) else ''
    if a.startswith('--config='):
      path = a.split('=', 1)[1]
    elif a == '--config':
      path = nxt
    elif a.startswith('--config.'):
      body = a[2:]
      overrides.append(body if '=' in body else f'{body}={nxt}')
  if path is None:
    return None
  try:
    config = load_config(path, lock=False)
  except (FileNotFoundError, ConfigFileError) as e:
    return str(e)
  for item in overrides:
    try:
      apply_overrides(config, [item])
    except KeyError as e:
      return f'--{item.split("=", 1)[0]}: {e.args[0]}'
    except ValueError as e:
      return f'--{item}: {e}'
  return None


class ConfigFileError(errors.UserError, AttributeError):
  """A config file that does not load (raises, or has no get_config)."""


def load_config(path: str, overrides: Sequence[str] = (),
                lock: bool = True) -> ml_collections.ConfigDict:
  """Imports a config file (or shipped row name), applies overrides and
  returns it locked.

  A locked config rejects new keys, so a typo fails instead of silently
  adding a field.

  Raises:
    FileNotFoundError: no such file nor shipped config name.
    ConfigFileError (an AttributeError): the file has no `get_config`, or
      importing it or calling it raised (the message names the file).
    KeyError / ValueError: a bad override (see `apply_overrides`).
  """
  path = resolve_config_path(path)
  name = '_maskrcnn_config_' + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    if not hasattr(module, 'get_config'):
      raise ConfigFileError(f'{path} defines no get_config()')
    config = module.get_config()
  except ConfigFileError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigFileError(f'cannot load config file {path}: '
                          f'{type(e).__name__}: {e}') from e
  apply_overrides(config, overrides)
  if lock:
    config.lock()
  return config
