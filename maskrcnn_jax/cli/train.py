"""Trains a Mask R-CNN config.

  maskrcnn-train --config=r101_fpn_2x [--workdir=DIR] \
      [--config.train.global_batch_size=16] [--config.x=...]

(also `python train.py --config=configs/r101_fpn_2x.py` in the repository,
`python -m maskrcnn_jax train`). --config is a config file or a row name.
Starting again with an existing workdir resumes exactly where the last
checkpoint left off. Multi-host: run the same command on every host with
--coordinator_address=HOST:PORT --num_processes=N --process_id=I, or with
--distributed alone where jax.distributed detects the cluster (SLURM, TPU
pods, ...).

A second run on a workdir in use stops at once; resuming with a changed
config stops naming the keys (--allow_config_change accepts schedule and
evaluation changes). SIGTERM / Ctrl-C save a checkpoint and exit with
128 + the signal number. Errors are one line `error: ...` (exit status 2);
--debug (or MASKRCNN_JAX_DEBUG=1) shows the traceback.
"""

import logging
import os
import sys

from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from maskrcnn_jax import config as config_lib
from maskrcnn_jax import errors

_CONFIG = config_flags.DEFINE_config_file('config', None, 'config file or '
                                          'row name', lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'output folder (default: work_dirs/<config name>)')
_MAX_STEPS = flags.DEFINE_integer('max_steps', None,
                                  'stop after this step (smoke runs)')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'jax.distributed coordinator host:port')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                      'number of processes (hosts)')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'this process index')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'initialise jax.distributed from the environment')
_ALLOW_CHANGE = flags.DEFINE_bool(
    'allow_config_change', False,
    'on resume, accept a config whose schedule/evaluation keys differ from '
    'the workdir\'s (recorded in config.<step>.json)')
flags.DEFINE_bool('debug', False, 'show the traceback of errors (also '
                  f'{errors.DEBUG_ENV}=1)')

_HELP_FLAGS = ('-h', '--help', '-help', '--helpshort', '--helpfull')


def _resolve_config_arg(argv):
  """--config=NAME / --config NAME (a shipped row name) -> its file."""
  out = list(argv)
  for i, arg in enumerate(out):
    if i == 0:
      continue
    if arg.startswith('--config='):
      prefix, value = '--config=', arg[len('--config='):]
    elif out[i - 1] == '--config':
      prefix, value = '', arg
    else:
      continue
    if not os.path.isfile(value):
      try:
        value = config_lib.resolve_config_path(value)
      except FileNotFoundError:
        pass  # config_flags reports it
    out[i] = prefix + value
  return out


def _parse_flags(argv):
  """absl flag parsing with one-line errors (config typos name close keys)."""
  try:
    flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    hint = config_lib.check_config_flags(argv[1:])
    if hint:
      raise errors.UserError(hint) from e
    if isinstance(e, flags.Error):
      raise errors.UserError(f'{errors.one_line(str(e))} (see --help)') from e
    raise
  try:
    config = _CONFIG.value  # config_flags loads the file lazily
    if config is not None:
      config.get('name')
  except Exception as e:  # pylint: disable=broad-except
    hint = config_lib.check_config_flags(argv[1:])
    raise errors.UserError(hint or errors.one_line(str(e))) from e
  if config is None:
    raise errors.UserError('--config is required, e.g. --config=quickstart '
                           '(a config file or row name; see --help)')
  return config


def _main(argv) -> int:
  """The command once argv[0] is the program name and --debug is out."""
  if any(a in _HELP_FLAGS for a in argv[1:]):
    print(__doc__)
    print(flags.FLAGS.main_module_help() or flags.FLAGS.module_help(
        __name__))
    return 0
  argv = _resolve_config_arg(argv)
  config = _parse_flags(argv)
  # Before importing the loop: absl.logging calls logging.basicConfig() (at
  # WARNING) the first time a library logs through it outside absl.app.
  logging.basicConfig(level=logging.INFO,
                      format='%(asctime)s %(levelname)s %(message)s')
  absl_logging.set_verbosity(absl_logging.INFO)
  logging.getLogger('absl').setLevel(logging.WARNING)  # orbax's INFO chatter
  # "Unable to initialize backend 'tpu'" on every machine without a TPU.
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)
  from maskrcnn_jax.train import loop  # pylint: disable=g-import-not-at-top
  if _COORDINATOR.value or _NUM_PROCESSES.value or _DISTRIBUTED.value:
    loop.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                _PROCESS_ID.value)
  workdir = _WORKDIR.value or os.path.join('work_dirs', config.name)
  result = loop.train_and_evaluate(
      config, workdir, max_steps=_MAX_STEPS.value,
      allow_config_change=_ALLOW_CHANGE.value)
  if result.get('signal'):
    return 128 + int(result['signal'])
  return 0


def main(argv=None) -> int:
  """Runs the command (argv[0] is the program name); returns the status.

  User errors print one line `error: ...` and return 2 (the traceback with
  --debug or MASKRCNN_JAX_DEBUG=1); a run stopped by a signal returns
  128 + its number after saving.
  """
  argv = list(sys.argv if argv is None else argv)
  program = argv[0] if argv else 'maskrcnn-train'
  return errors.main_guard(lambda rest: _main([program] + rest), argv[1:])


if __name__ == '__main__':
  sys.exit(main())
