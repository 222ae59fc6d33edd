"""`python -m maskrcnn_jax.train --config=...`: the train command."""

import sys

from maskrcnn_jax.cli import train

if __name__ == '__main__':
  sys.exit(train.main())
