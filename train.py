"""Trains a Mask R-CNN config (the command is `maskrcnn_jax.cli.train`).

  python train.py --config=configs/r101_fpn_2x.py [--workdir=DIR] \
      [--config.train.global_batch_size=16] [--config.x=...]
"""

import sys

from maskrcnn_jax.cli import train

if __name__ == '__main__':
  sys.exit(train.main())
