"""`python -m maskrcnn_jax.convert`: the converter command
(`maskrcnn_jax.cli.convert`; library: `maskrcnn_jax.convert.convert_checkpoint`).
"""

import sys

from maskrcnn_jax.cli.convert import main

if __name__ == '__main__':
  sys.exit(main())
