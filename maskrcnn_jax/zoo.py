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
"""

import dataclasses
import glob
import inspect
import os
import shutil
import tempfile
import urllib.request
from typing import List, Optional

import ml_collections

from maskrcnn_jax import config as config_lib
from maskrcnn_jax.testing import fixtures

WEIGHT_CHOICES = ('auto', 'fixture', 'zoo')


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
      roi={k: v for k, v in m['roi'].items() if k != 'roi_align_chunk'})


def fixture_arch(config) -> Optional[str]:
  """The fixture architecture whose weights fit `config`, or None."""
  want = _structure(config)
  for arch in sorted(fixtures.ARCH_CONFIGS):
    if _structure(config_lib.load_config(fixtures.config_path(arch))) == want:
      return arch
  return None


def download(url: str, path: str) -> str:
  """Downloads `url` to `path` (atomically) unless `path` exists."""
  if os.path.isfile(path):
    return path
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                             suffix='.part')
  try:
    with os.fdopen(fd, 'wb') as f, urllib.request.urlopen(url) as r:
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
                   cache_dir: str = 'work_dirs/checkpoints') -> str:
  """An MMDetection `.pth` for `config`; returns its path.

  Args:
    config: a model-zoo config.
    weights: 'zoo' downloads `config.mmdet.url` (once, into cache_dir);
      'fixture' writes the reference fixture weights of the same
      architecture (needs ../shared/fixtures or $MASKRCNN_FIXTURES, and
      torch); 'auto' is 'fixture' where possible, else 'zoo'; anything else
      is taken as the path of an existing checkpoint (.pth or converted
      directory) and returned unchanged.
    cache_dir: where downloads and fixture files go.

  Raises:
    ValueError: no fixture weights fit the config, or it has no URL.
    FileNotFoundError: a given path does not exist.
  """
  if weights not in WEIGHT_CHOICES:
    if not os.path.exists(weights):
      raise FileNotFoundError(f'checkpoint not found: {weights}')
    return weights
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
  if cache_dir is None:
    cache_dir = inspect.signature(get_checkpoint).parameters[
        'cache_dir'].default
  config = config_lib.load_config(name)
  kind = resolve_weights(config, weights)
  out = os.path.join(cache_dir, 'converted',
                     name if kind == 'zoo' else f'{name}_{kind}')
  if checkpoint_lib.is_inference_checkpoint(out):
    return out
  pth_path = get_checkpoint(config, kind, cache_dir=cache_dir)
  converter.convert_checkpoint(config, pth_path, out, overwrite=True)
  return out
