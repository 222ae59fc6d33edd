"""`python -m maskrcnn_jax.train --config=...`: the train command."""

from maskrcnn_jax.cli import train

if __name__ == '__main__':
  train.main()
