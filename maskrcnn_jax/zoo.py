"""The model-zoo rows and where their weights come from.

    from maskrcnn_jax import zoo
    zoo.rows()                        # the 21 MMDetection rows of configs/
    path = zoo.get_checkpoint(config, 'auto')   # an MMDetection .pth

`get_checkpoint` gives the notebooks and tools one way to get a row's
weights: the published MMDetection checkpoint (downloaded once from the URL
in the config, `config.mmdet.url`) or, where the reference fixtures
(../shared/fixtures) are present and the architecture is one of theirs, the
fixture weights as a real MMDetection `.pth` (deterministic synthetic
weights: meaningless detections, no network needed).

`get_imagenet_weights` resolves the ImageNet backbone names MMDetection's
configs give (`train.init_backbone`: `torchvision://resnet50`,
`open-mmlab://detectron2/resnet50_caffe`, ...) to the file mmengine loads
for them and downloads it once. Downloads go to `default_cache_dir()`:
$MASKRCNN_CACHE_DIR, else work_dirs/checkpoints.
"""

import dataclasses
import glob
import logging
import os
import shutil
import tempfile
import urllib.request
from typing import List, Optional, Tuple

import ml_collections

from maskrcnn_jax import config as config_lib
from maskrcnn_jax.testing import fixtures

WEIGHT_CHOICES = ('auto', 'fixture', 'zoo')
DEFAULT_CACHE_DIR = 'work_dirs/checkpoints'
CACHE_ENV = 'MASKRCNN_CACHE_DIR'

# The ImageNet weights behind MMDetection's `init_cfg=dict(type='Pretrained',
# checkpoint=NAME)` for the ResNet/ResNeXt backbones this model builds, as
# mmengine 0.10 (MMDetection 3.3's) resolves NAME
# (mmengine/runner/checkpoint.py): `torchvision://X` -> `get_torchvision_models()
# [X]`, which with torchvision >= 0.13 is mmengine/hub/torchvision_0.12.json
# (plain names; the weight enums only add `X.default`/`X.imagenet1k_v1`
# keys); `open-mmlab://X` -> mmengine/hub/openmmlab.json after
# mmengine/hub/deprecated.json's renames. tests/test_init_backbone.py checks
# this table against literal copies of those files. (MMDetection's docs name
# the older torchvision files resnet50-19c8e357.pth / resnet101-5d3b4d8f.pth,
# which older torchvision releases served; mmengine 0.10 loads the ones
# below.)
IMAGENET_URLS = {
    'torchvision://resnet18':
        'https://download.pytorch.org/models/resnet18-f37072fd.pth',
    'torchvision://resnet34':
        'https://download.pytorch.org/models/resnet34-b627a593.pth',
    'torchvision://resnet50':
        'https://download.pytorch.org/models/resnet50-0676ba61.pth',
    'torchvision://resnet101':
        'https://download.pytorch.org/models/resnet101-63fe2227.pth',
    'torchvision://resnet152':
        'https://download.pytorch.org/models/resnet152-394f9c45.pth',
    'torchvision://resnext50_32x4d':
        'https://download.pytorch.org/models/resnext50_32x4d-7cdf4587.pth',
    'torchvision://resnext101_32x8d':
        'https://download.pytorch.org/models/resnext101_32x8d-8ba56ff5.pth',
    'open-mmlab://detectron/resnet50_caffe':
        'https://download.openmmlab.com/pretrain/third_party/'
        'resnet50_caffe-788b5fa3.pth',
    'open-mmlab://detectron2/resnet50_caffe':
        'https://download.openmmlab.com/pretrain/third_party/'
        'resnet50_msra-5891d200.pth',
    'open-mmlab://detectron/resnet101_caffe':
        'https://download.openmmlab.com/pretrain/third_party/'
        'resnet101_caffe-3ad79236.pth',
    'open-mmlab://detectron2/resnet101_caffe':
        'https://download.openmmlab.com/pretrain/third_party/'
        'resnet101_msra-6cc46731.pth',
    'open-mmlab://detectron2/resnext101_32x8d':
        'https://download.openmmlab.com/pretrain/third_party/'
        'resnext101_32x8d-1516f1aa.pth',
    'open-mmlab://resnext50_32x4d':
        'https://download.openmmlab.com/pretrain/third_party/'
        'resnext50-32x4d-0ab1a123.pth',
    'open-mmlab://resnext101_32x4d':
        'https://download.openmmlab.com/pretrain/third_party/'
        'resnext101_32x4d-a5af3160.pth',
    'open-mmlab://resnext101_64x4d':
        'https://download.openmmlab.com/pretrain/third_party/'
        'resnext101_64x4d-ee2c6f71.pth',
}
# mmengine/hub/deprecated.json entries that map to a name above.
IMAGENET_ALIASES = {
    'open-mmlab://resnet50_caffe': 'open-mmlab://detectron/resnet50_caffe',
    'open-mmlab://resnet101_caffe': 'open-mmlab://detectron/resnet101_caffe',
}


class WeightsUnavailableError(OSError):
  """ImageNet weights could not be downloaded (offline, HTTP error, ...).

  An OSError: entry points report it as a one-line error (the message).
  """


@dataclasses.dataclass(frozen=True)
class Row:
  """One model-zoo config: `configs/<name>.py`."""
  name: str
  path: str          # 'configs/<name>.py', as in a source checkout
  config: ml_collections.ConfigDict


def configs_dir() -> str:
  """The shipped configs (`config.configs_dir()`)."""
  return config_lib.configs_dir()


def rows() -> List[Row]:
  """Every config of an MMDetection row (one with a checkpoint URL), by name."""
  out = []
  for path in sorted(glob.glob(os.path.join(configs_dir(), '*.py'))):
    if os.path.basename(path).startswith('_'):
      continue
    config = config_lib.load_config(path)
    if config.mmdet.url:
      out.append(Row(config.name, f'configs/{os.path.basename(path)}',
                     config))
  return out


def fixtures_available() -> bool:
  try:
    fixtures.fixtures_dir()
  except FileNotFoundError:
    return False
  return True


def _structure(config) -> dict:
  """The model fields that decide the variables' names and shapes."""
  m = config.model.to_dict()
  b = m['backbone']
  return dict(
      num_classes=m['num_classes'],
      backbone={k: b[k] for k in ('depth', 'groups', 'style', 'base_channels')},
      base_width=b['base_width'] if b['groups'] > 1 else None,
      neck=m['neck'], rpn=m['rpn'],
      roi={k: v for k, v in m['roi'].items()
           if k not in ('roi_align_chunk', 'roi_align_strategy')})


def fixture_arch(config) -> Optional[str]:
  """The fixture architecture whose weights fit `config`, or None."""
  want = _structure(config)
  for arch in sorted(fixtures.ARCH_CONFIGS):
    if _structure(config_lib.load_config(fixtures.config_path(arch))) == want:
      return arch
  return None


def default_cache_dir() -> str:
  """Where downloaded weights go: $MASKRCNN_CACHE_DIR or work_dirs/checkpoints."""
  return os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR


def download(url: str, path: str, timeout: float = 60.0) -> str:
  """Downloads `url` to `path` (atomically) unless `path` exists."""
  if os.path.isfile(path):
    return path
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                             suffix='.part')
  try:
    with os.fdopen(fd, 'wb') as f, urllib.request.urlopen(
        url, timeout=timeout) as r:
      shutil.copyfileobj(r, f, length=1 << 20)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def resolve_weights(config, weights: str = 'auto') -> str:
  """'auto' -> 'fixture' where the fixtures fit `config`, else 'zoo'."""
  if weights not in WEIGHT_CHOICES:
    raise ValueError(f'weights must be one of {WEIGHT_CHOICES}, got '
                     f'{weights!r}')
  if weights == 'auto':
    ok = fixtures_available() and fixture_arch(config) is not None
    return 'fixture' if ok else 'zoo'
  return weights


def get_checkpoint(config, weights: str = 'auto',
                   cache_dir: Optional[str] = None) -> str:
  """An MMDetection `.pth` for `config`; returns its path.

  Args:
    config: a model-zoo config.
    weights: 'zoo' downloads `config.mmdet.url` (once, into cache_dir);
      'fixture' writes the reference fixture weights of the same
      architecture (needs ../shared/fixtures or $MASKRCNN_FIXTURES, and
      torch); 'auto' is 'fixture' where possible, else 'zoo'; anything else
      is taken as the path of an existing checkpoint (.pth or converted
      directory) and returned unchanged.
    cache_dir: where downloads and fixture files go (default:
      `default_cache_dir()`).

  Raises:
    ValueError: no fixture weights fit the config, or it has no URL.
    FileNotFoundError: a given path does not exist.
  """
  if weights not in WEIGHT_CHOICES:
    if not os.path.exists(weights):
      raise FileNotFoundError(f'checkpoint not found: {weights}')
    return weights
  cache_dir = cache_dir or default_cache_dir()
  kind = resolve_weights(config, weights)
  if kind == 'fixture':
    arch = fixture_arch(config)
    if arch is None:
      raise ValueError(
          f'no fixture weights have the architecture of {config.name}; '
          f'fixtures exist for {sorted(fixtures.ARCH_CONFIGS)}')
    path = os.path.join(cache_dir, f'fixture_{arch}.pth')
    if not os.path.isfile(path):
      os.makedirs(cache_dir, exist_ok=True)
      tmp = f'{path}.{os.getpid()}.part'
      try:
        fixtures.write_pth(arch, tmp)
        os.replace(tmp, path)
      finally:
        if os.path.exists(tmp):
          os.remove(tmp)
    return path
  if not config.mmdet.url:
    raise ValueError(f'{config.name} has no MMDetection checkpoint URL')
  return download(config.mmdet.url,
                  os.path.join(cache_dir, config.mmdet.checkpoint))


def imagenet_url(name: str) -> str:
  """The URL mmengine loads for an `init_cfg` checkpoint name.

  Raises:
    ValueError: a name outside IMAGENET_URLS (the message lists them).
  """
  resolved = name
  for prefix, canonical in (('openmmlab://', 'open-mmlab://'),
                            ('modelzoo://', 'torchvision://')):
    if resolved.startswith(prefix):  # mmengine's other spellings
      resolved = canonical + resolved[len(prefix):]
  resolved = IMAGENET_ALIASES.get(resolved, resolved)
  if resolved not in IMAGENET_URLS:
    raise ValueError(
        f'train.init_backbone={name!r} is not a known ImageNet backbone '
        f'name; known: {", ".join(sorted(IMAGENET_URLS))} (or pass a file '
        'with train.init_backbone_from=FILE)')
  return IMAGENET_URLS[resolved]


def get_imagenet_weights(name: str, cache_dir: Optional[str] = None
                         ) -> Tuple[str, str]:
  """(url, local path) of the ImageNet weights `name`, downloaded once.

  The file is `<cache_dir>/<basename of the URL>`; an existing file there is
  used as is (put a copy there to work offline).

  Raises:
    ValueError: unknown name.
    WeightsUnavailableError: the download failed; the one-line message names
      the URL and how to pass a local file instead.
  """
  url = imagenet_url(name)
  path = os.path.join(cache_dir or default_cache_dir(),
                      os.path.basename(url))
  if not os.path.isfile(path):
    logging.getLogger(__name__).info('downloading %s (%s) to %s', name, url,
                                     path)
  try:
    download(url, path)
  except (OSError, ValueError) as e:  # URLError/HTTPError/timeouts are OSError
    reason = getattr(e, 'reason', None) or e
    raise WeightsUnavailableError(
        f'cannot download the ImageNet weights {name} from {url} ({reason}); '
        f'download that file and pass it with '
        f'--config.train.init_backbone_from=FILE (or put it at {path}), or '
        "train the backbone from scratch with "
        "--config.train.init_backbone_from=none") from e
  return url, path


def get_converted(name: str, weights: str = 'zoo',
                  cache_dir: Optional[str] = None) -> str:
  """An inference checkpoint directory of the row `name`, made once.

  `<cache_dir>/converted/<name>` (`<name>_fixture` for fixture weights):
  converted from `get_checkpoint(config, weights, cache_dir)` the first
  time; later calls return it with no download and no conversion. It
  stores the row's config (`Predictor.from_pretrained` loads it).
  """
  from maskrcnn_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.convert import converter  # pylint: disable=g-import-not-at-top
  cache_dir = cache_dir or default_cache_dir()
  config = config_lib.load_config(name)
  kind = resolve_weights(config, weights)
  out = os.path.join(cache_dir, 'converted',
                     name if kind == 'zoo' else f'{name}_{kind}')
  if checkpoint_lib.is_inference_checkpoint(out):
    return out
  pth_path = get_checkpoint(config, kind, cache_dir=cache_dir)
  converter.convert_checkpoint(config, pth_path, out, overwrite=True)
  return out
