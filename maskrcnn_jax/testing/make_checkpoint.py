"""Writes a fixture-weight detector checkpoint (numpy only, no download).

  python -m maskrcnn_jax.testing.make_checkpoint --arch r50_fpn \
      --out work_dirs/fixture_r50_fpn

The weights are the deterministic synthetic ones of ../shared/fixtures
(`make_weights.py`), on which MMDetection's outputs are recorded; they are
random, so the detections are meaningless but exactly reproducible.
"""

import argparse

from maskrcnn_jax import checkpoint
from maskrcnn_jax import config as config_lib
from maskrcnn_jax.convert import mmdet
from maskrcnn_jax.models import build
from maskrcnn_jax.testing import fixtures


def make_checkpoint(arch: str, out: str, overwrite: bool = False) -> str:
  config = config_lib.load_config(fixtures.config_path(arch))
  variables = mmdet.state_dict_to_variables(
      fixtures.state_dict(arch), config,
      expected=build.abstract_variables(config))
  return checkpoint.save_inference_checkpoint(
      out, variables, fixtures.coco_classes(), config.name,
      source=f'fixtures/manifests/{arch}.json', overwrite=overwrite,
      config=config)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--arch', default='r50_fpn',
                 choices=sorted(fixtures.ARCH_CONFIGS))
  p.add_argument('--out', required=True)
  p.add_argument('--overwrite', action='store_true')
  args = p.parse_args(argv)
  print(make_checkpoint(args.arch, args.out, args.overwrite))


if __name__ == '__main__':
  main()
