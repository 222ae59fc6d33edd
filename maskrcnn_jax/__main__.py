"""`python -m maskrcnn_jax {train,eval,demo,convert} ...`: the commands.

The same as the console commands maskrcnn-train, maskrcnn-eval,
maskrcnn-demo and maskrcnn-convert (`maskrcnn_jax.cli`).
"""

import importlib
import sys

COMMANDS = ('train', 'eval', 'demo', 'convert')


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] not in COMMANDS:
    print(f'usage: python -m maskrcnn_jax {{{",".join(COMMANDS)}}} '
          '[--help | ARGS...]', file=sys.stderr)
    return 0 if argv and argv[0] in ('-h', '--help') else 2
  command, rest = argv[0], argv[1:]
  module = importlib.import_module(f'maskrcnn_jax.cli.{command}')
  if command == 'train':  # absl: argv[0] is the program name
    return module.main([f'maskrcnn-{command}'] + rest)
  return module.main(rest)


if __name__ == '__main__':
  sys.exit(main())
