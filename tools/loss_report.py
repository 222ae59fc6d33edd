"""Per-image training losses and per-module gradient norms as JSON.

  python -m tools.loss_report --config CFG --checkpoint CKPT \
      --ann FILE --images DIR [--deterministic-sampling]

Each image runs as a batch of one (test scale, no flip). Prints a JSON list
of {"file_name", "losses": {name: value}, "total_loss",
"grad_sq_norm_by_module": {"backbone.layer2": ..., ...}} where each norm is
the squared L2 norm of d total_loss / d params over the trainable params
whose MMDetection key starts with that prefix. `--deterministic-sampling`
takes every positive and negative candidate, as MMDetection does with a
sampler larger than the candidates. Use it to debug a conversion, a dataset
or a diverging run.
"""

import argparse
import json
import sys

from maskrcnn_jax import config as config_lib  # pylint: disable=g-import-not-at-top
from maskrcnn_jax import errors  # pylint: disable=g-import-not-at-top
from maskrcnn_jax.train import loss_report


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  config_lib.add_model_arguments(
      p, config_required=True,
      checkpoint_help='MMDetection .pth or converted checkpoint directory')
  p.add_argument('--ann', required=True, help='COCO annotation JSON')
  p.add_argument('--images', required=True, help='image folder')
  p.add_argument('--deterministic-sampling', action='store_true')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--file-names', nargs='*', default=None,
                 help='only these images (file_name in the annotations)')
  args, overrides = config_lib.parse_config_args(p, argv)
  config = config_lib.load_config(args.config, overrides)
  report = loss_report.loss_report(config, args.checkpoint, args.ann,
                                   args.images, args.deterministic_sampling,
                                   args.seed, args.file_names)
  json.dump(report, sys.stdout, indent=1)
  print()


if __name__ == '__main__':
  sys.exit(errors.main_guard(main))
