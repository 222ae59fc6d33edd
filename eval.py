"""Evaluates a detector on a COCO-format set (the command is
`maskrcnn_jax.cli.eval`; `python eval.py --help`).

  python eval.py --checkpoint CKPT [--config configs/r50_fpn_1x.py] \
      [--ann FILE --images DIR] [--out-dir DIR] [--config.a.b=value]
"""

import sys

from maskrcnn_jax.cli import eval as eval_cli

if __name__ == '__main__':
  sys.exit(eval_cli.main())
