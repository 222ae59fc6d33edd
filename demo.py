"""Runs a detector on an image or a folder and draws the results (the
command is `maskrcnn_jax.cli.demo`; `python demo.py --help`).

  python demo.py --checkpoint CKPT --input IMAGE_OR_DIR --out-dir DIR \
      [--config configs/r50_fpn_1x.py] [--config.a.b=value]
"""

import sys

from maskrcnn_jax.cli import demo

if __name__ == '__main__':
  sys.exit(demo.main())
