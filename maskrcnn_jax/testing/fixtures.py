"""Access to the MMDetection reference fixtures (../shared/fixtures).

The fixtures hold what MMDetection 3.3.0 computes with deterministic
synthetic weights; `make_weights.py` there rebuilds those weights from a
manifest with numpy alone.
"""

import functools
import importlib.util
import json
import os
from typing import Dict, Tuple

import numpy as np

ARCH_CONFIGS = {
    'r50_fpn': 'r50_fpn_1x',
    'r50_caffe_fpn': 'r50_caffe_fpn_1x',
    'x101_32x4d_fpn': 'x101_32x4d_fpn_1x',
}
IMAGES = ('scene_landscape', 'scene_portrait')


def repo_root() -> str:
  return os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))


def fixtures_dir() -> str:
  """$MASKRCNN_FIXTURES or <repo>/../shared/fixtures; error if absent."""
  path = os.environ.get('MASKRCNN_FIXTURES') or os.path.join(
      repo_root(), '..', 'shared', 'fixtures')
  path = os.path.normpath(path)
  if not os.path.isfile(os.path.join(path, 'README.md')):
    raise FileNotFoundError(
        f'reference fixtures not found at {path}; set MASKRCNN_FIXTURES')
  return path


@functools.lru_cache(maxsize=None)
def _make_weights_module():
  path = os.path.join(fixtures_dir(), 'make_weights.py')
  spec = importlib.util.spec_from_file_location('fixture_make_weights', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def manifest(arch: str) -> dict:
  with open(os.path.join(fixtures_dir(), 'manifests', f'{arch}.json')) as f:
    return json.load(f)


def state_dict(arch: str) -> Dict[str, np.ndarray]:
  """The fixture checkpoint's state dict (numpy), in checkpoint order."""
  return dict(_make_weights_module().build(manifest(arch)))


def coco_classes():
  return tuple(_make_weights_module().COCO_CLASSES)


def write_pth(arch: str, path: str) -> str:
  """Writes the fixture checkpoint as a real MMDetection .pth (needs torch)."""
  module = _make_weights_module()
  import sys
  argv = sys.argv
  try:
    sys.argv = ['make_weights.py', os.path.join(fixtures_dir(), 'manifests',
                                                f'{arch}.json'), path]
    module.main()
  finally:
    sys.argv = argv
  return path


def reference(arch: str, image: str) -> Tuple[dict, dict]:
  """(npz arrays, json meta) of MMDetection's outputs for arch on image."""
  base = os.path.join(fixtures_dir(), 'ref', f'{arch}__{image}')
  with open(base + '.json') as f:
    meta = json.load(f)
  return dict(np.load(base + '.npz')), meta


def image_path(image: str) -> str:
  return os.path.join(fixtures_dir(), 'images', f'{image}.png')


def config_path(arch: str) -> str:
  return os.path.join(repo_root(), 'configs', ARCH_CONFIGS[arch] + '.py')
