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
"""

import logging
import os
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from maskrcnn_jax import config as config_lib

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
flags.mark_flags_as_required(['config'])


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


def _main(argv):
  from maskrcnn_jax.train import loop  # pylint: disable=g-import-not-at-top
  del argv
  logging.basicConfig(level=logging.INFO,
                      format='%(asctime)s %(levelname)s %(message)s')
  absl_logging.set_verbosity(absl_logging.INFO)
  logging.getLogger('absl').setLevel(logging.WARNING)  # orbax's INFO chatter
  if _COORDINATOR.value or _NUM_PROCESSES.value or _DISTRIBUTED.value:
    loop.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                _PROCESS_ID.value)
  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join('work_dirs', config.name)
  loop.train_and_evaluate(config, workdir, max_steps=_MAX_STEPS.value)


def main(argv=None) -> int:
  """Runs the command (argv[0] is the program name); exits when done."""
  argv = list(sys.argv if argv is None else argv)
  app.run(_main, argv=_resolve_config_arg(argv))
  return 0


if __name__ == '__main__':
  main()
