"""Console, metrics.jsonl and TensorBoard logging of training metrics."""

import datetime
import json
import logging
import os
from typing import Dict, Optional

log = logging.getLogger(__name__)

_CONSOLE_KEYS = ('total_loss', 'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls',
                 'loss_bbox', 'loss_mask', 'acc')


def truncate_jsonl(path: str, last_step: int) -> int:
  """Drops the rows of `path` with step > last_step (and torn lines),
  atomically; returns how many rows were dropped.

  A run killed after its last checkpoint logged steps that the resumed run
  logs again; cutting them keeps every step once.
  """
  if not os.path.isfile(path):
    return 0
  kept, dropped = [], 0
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
        step = int(row['step'])
      except (ValueError, KeyError, TypeError):
        dropped += 1  # a line torn by a kill, or not a metrics row
        continue
      if step > last_step:
        dropped += 1
      else:
        kept.append(line if line.endswith('\n') else line + '\n')
  if dropped:
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(kept)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
    log.info('%s: removed %d rows after the resumed step %d', path, dropped,
             last_step)
  return dropped


class MetricsWriter:
  """Writes one JSON line per record and TensorBoard scalars (process 0).

  With `resume_step`, rows of metrics.jsonl after that step (left by a run
  killed after its last checkpoint) are removed first.
  """

  def __init__(self, workdir: str, enabled: bool = True,
               resume_step: Optional[int] = None):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if not enabled:
      return
    path = os.path.join(workdir, 'metrics.jsonl')
    if resume_step is not None:
      truncate_jsonl(path, resume_step)
    self._jsonl = open(path, 'a')
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))
    except ImportError:  # TensorBoard is optional.
      log.warning('tensorboardX not installed: no TensorBoard events')

  def write(self, step: int, metrics: Dict[str, float], prefix: str = '',
            eta_seconds: Optional[float] = None):
    if not self.enabled:
      return
    record = {'step': step, **{prefix + k: v for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in metrics.items():
        if isinstance(v, (int, float)):
          tag = (prefix + k).replace('@', '_at_')
          self._tb.add_scalar(tag, v, step)
      self._tb.flush()
    parts = [f'step {step}']
    for k in _CONSOLE_KEYS:
      if k in metrics:
        parts.append(f'{k} {metrics[k]:.4f}')
    if 'lr' in metrics:
      parts.append(f'lr {metrics["lr"]:.2e}')
    if 'images_per_sec' in metrics:
      parts.append(f'{metrics["images_per_sec"]:.2f} img/s')
    if eta_seconds is not None:
      parts.append(f'eta {datetime.timedelta(seconds=int(eta_seconds))}')
    if prefix:
      parts += [f'{prefix}{k} {v:.4f}' for k, v in metrics.items()
                if isinstance(v, (int, float))][:8]
    print(' | '.join(parts), flush=True)

  def close(self):
    if self._jsonl:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
