"""User errors: one line `error: ...` and a non-zero exit in every entry point.

    from maskrcnn_jax import errors

    def main(argv) -> int:
      ...
      raise errors.UserError('what went wrong and what to do')

    if __name__ == '__main__':
      sys.exit(errors.main_guard(main))

`main_guard` turns the errors a user can meet (a bad path, a malformed
annotation file, a config typo, a bad checkpoint, a missing optional
dependency, an unwritable folder) into one line on stderr and exit status 2
(`UserError.exit_code`); Ctrl-C outside a handler gives 130. The traceback is
shown only with `--debug` on the command line or `MASKRCNN_JAX_DEBUG=1` in
the environment. Anything else (a bug) keeps its traceback.
"""

import os
import sys
from typing import Callable, List, Optional, Sequence

DEBUG_ENV = 'MASKRCNN_JAX_DEBUG'
DEBUG_FLAG = '--debug'
EXIT_USER_ERROR = 2

# Import name -> pip requirement of the optional / third-party dependencies.
INSTALL_NAMES = {
    'torch': 'torch',
    'tensorboardX': 'tensorboardX',
    'cv2': 'opencv-python-headless',
    'pycocotools': 'pycocotools',
    'tensorflow_datasets': 'tensorflow-datasets',
    'grain': 'grain',
    'array_record': 'array-record',
    'matplotlib': 'matplotlib',
    'nbclient': 'nbclient',
    'orbax': 'orbax-checkpoint',
    'ml_collections': 'ml-collections',
    'flax': 'flax',
    'optax': 'optax',
    'jax': 'jax',
    'absl': 'absl-py',
    'tqdm': 'tqdm',
}

# Longest message printed; longer ones are cut (the rest under --debug).
MAX_CHARS = 600


class UserError(Exception):
  """A problem with the input or the environment that the user can fix.

  The message is printed as `error: <message>`; `exit_code` is the status.
  """

  def __init__(self, message: str, exit_code: int = EXIT_USER_ERROR):
    super().__init__(message)
    self.exit_code = exit_code


def missing_dependency(exc: ImportError) -> UserError:
  """UserError naming a missing module and the command that installs it."""
  name = (getattr(exc, 'name', None) or str(exc)).split('.')[0]
  package = INSTALL_NAMES.get(name, name)
  return UserError(f'missing optional dependency {name!r}: install it with '
                   f'`pip install {package}` (see requirements.txt for the '
                   'tested version)')


def one_line(message: str, max_chars: int = MAX_CHARS) -> str:
  """The first line of `message` (+ how many were left), at most max_chars."""
  lines = [l for l in str(message).strip().splitlines() if l.strip()]
  if not lines:
    return ''
  out = lines[0].strip()
  if len(lines) > 1:
    out += (f' (+{len(lines) - 1} more lines: run with {DEBUG_FLAG} or '
            f'{DEBUG_ENV}=1 for all)')
  if len(out) > max_chars:
    out = out[:max_chars - 3] + '...'
  return out


def _describe(exc: BaseException) -> Optional[str]:
  """The one-line message of a user error, None when `exc` is a bug."""
  if isinstance(exc, UserError):
    return str(exc)
  if isinstance(exc, ModuleNotFoundError):
    name = (exc.name or '').split('.')[0]
    if name == 'maskrcnn_jax':
      return None
    return str(missing_dependency(exc))
  if isinstance(exc, OSError):
    if exc.filename is not None and exc.strerror:
      return f'{exc.strerror}: {exc.filename}'
    return str(exc)
  if isinstance(exc, KeyError):
    # str(KeyError('x')) is "'x'": show the message itself.
    return str(exc.args[0]) if exc.args else 'KeyError'
  if isinstance(exc, ValueError):
    return str(exc)
  return None


def exit_code(exc: BaseException) -> int:
  return getattr(exc, 'exit_code', EXIT_USER_ERROR)


def debug_requested(argv: Sequence[str] = ()) -> bool:
  return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, '') not in (
      '', '0', 'false', 'False')


def strip_debug(argv: Sequence[str]) -> List[str]:
  return [a for a in argv if a != DEBUG_FLAG]


def main_guard(main: Callable[[List[str]], Optional[int]],
               argv: Optional[Sequence[str]] = None) -> int:
  """Runs `main(argv)` (argv without `--debug`); returns the exit status.

  User errors print `error: <one line>` on stderr and return their exit
  code (2); under `--debug` / MASKRCNN_JAX_DEBUG=1 they propagate with the
  traceback. `main` returning None means 0.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = debug_requested(argv)
  try:
    rc = main(strip_debug(argv))
  except KeyboardInterrupt:
    if debug:
      raise
    print('error: interrupted (Ctrl-C)', file=sys.stderr)
    return 130
  except Exception as e:  # pylint: disable=broad-except
    message = _describe(e)
    if message is None or debug:
      raise
    print(f'error: {one_line(message)}', file=sys.stderr, flush=True)
    return exit_code(e)
  return 0 if rc is None else int(rc)
