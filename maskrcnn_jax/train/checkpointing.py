"""Training checkpoints: orbax, asynchronous and atomic, keep the last K.

A checkpoint step holds the `TrainState` (params, optimizer, step, RNG, loss
scale), the data iterator state of every process (JSON) and run metadata.
Orbax writes each step to a temporary directory and renames it when
complete, so an interrupted save never leaves a half-written step behind;
`latest_step` only sees finished steps.
"""

import json
import os
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from maskrcnn_jax import errors


def manager(directory: str, max_to_keep: int,
            asynchronous: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True,
      enable_async_checkpointing=asynchronous)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=('state', 'data', 'meta'))


def _gather_json(obj) -> List[Any]:
  """The JSON-serialisable `obj` of every process, in process order."""
  if jax.process_count() == 1:
    return [obj]
  data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  length = multihost_utils.process_allgather(np.int32(len(data)))
  buf = np.zeros(int(np.max(length)), np.uint8)
  buf[:len(data)] = data
  every = multihost_utils.process_allgather(buf)
  return [json.loads(bytes(every[i][:int(length[i])]).decode())
          for i in range(jax.process_count())]


def save(mgr: ocp.CheckpointManager, step: int, state, data_state,
         meta: Dict[str, Any], force: bool = False) -> bool:
  """Starts an (async) save of `step`; returns whether it was saved."""
  data = {'processes': _gather_json(data_state)}
  return mgr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data),
      meta=ocp.args.JsonSave(meta)), force=force)


def restore(mgr: ocp.CheckpointManager, abstract_state,
            step: Optional[int] = None) -> Tuple[Any, Any, Dict[str, Any]]:
  """(state, this process's data iterator state, meta) of `step`/latest."""
  step = mgr.latest_step() if step is None else step
  try:
    restored = mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
  except (ValueError, KeyError, TypeError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
    raise errors.UserError(
        f'cannot resume from checkpoint step {step} in {mgr.directory}: its '
        f'state does not fit this config ({first[:300]}); use the config the '
        'workdir was trained with (config.json) or a new workdir') from e
  processes = restored['data']['processes']
  if len(processes) != jax.process_count():
    raise errors.UserError(f'checkpoint step {step} was written by '
                     f'{len(processes)} processes; this run has '
                     f'{jax.process_count()}')
  return restored['state'], processes[jax.process_index()], restored['meta']
