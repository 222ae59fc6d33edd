"""Reading and plotting training logs (metrics.jsonl), as MMDetection's
tools/analysis_tools/analyze_logs.py (the command: tools/analyze_logs.py).

    from maskrcnn_jax import log_analysis
    log = log_analysis.load_log('work_dirs/x/metrics.jsonl')
    log_analysis.plot_curve([log], ['x'], ['loss_cls', 'loss_mask'])
    log_analysis.cal_train_time(['work_dirs/x/metrics.jsonl'], [log])
metrics.jsonl (written by train.py) has one JSON object per line: 'step',
the losses ('total_loss', 'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls',
'loss_bbox', 'loss_mask', 'acc'), 'lr' and 'images_per_sec' every
train.log_every steps, and the evaluation metrics ('val/bbox_mAP',
'val/segm_mAP', ...) on separate lines at each evaluation. A key is plotted
against 'step' from every line that has it; keys are drawn in one figure
(one curve per log and key). A run resumed in the same workdir appends to
the same file; a step logged twice keeps its last value.
"""

import json
import os
from typing import Dict, List, Sequence, Tuple

from maskrcnn_jax import errors

Series = Dict[str, List[Tuple[int, float]]]


def load_log(path: str) -> Series:
  """{key: [(step, value), ...]} of one metrics.jsonl, steps ascending."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'log not found: {path}')
  series: Dict[str, Dict[int, float]] = {}
  with open(path) as f:
    for n, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}:{n}: not JSON ({e})') from None
      if 'step' not in record:
        raise ValueError(f'{path}:{n}: no "step" field')
      step = int(record['step'])
      for k, v in record.items():
        if k != 'step' and isinstance(v, (int, float)):
          series.setdefault(k, {})[step] = float(v)
  return {k: sorted(v.items()) for k, v in series.items()}


def run_name(path: str) -> str:
  """The workdir's name for 'WORKDIR/metrics.jsonl', else the file stem."""
  base = os.path.basename(path)
  if base == 'metrics.jsonl':
    return os.path.basename(os.path.dirname(os.path.abspath(path)))
  return os.path.splitext(base)[0]


def plot_curve(logs: Sequence[Series], names: Sequence[str],
               keys: Sequence[str], legend: Sequence[str] = (),
               title: str = '', out: str = '', backend: str = '',
               log_y: bool = False,
               start_step: int = 0):
  """Draws every key of every log against the step; returns the figure."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError as e:  # one line with the install command
    raise errors.missing_dependency(e) from e
  if backend:
    matplotlib.use(backend)
  elif out:
    matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  labels = list(legend)
  if not labels:
    labels = [f'{name}_{k}' if len(logs) > 1 else k
              for name in names for k in keys]
  if len(labels) != len(logs) * len(keys):
    raise ValueError(f'--legend needs {len(logs) * len(keys)} entries (one '
                     f'per log and key), got {len(labels)}')
  fig, ax = plt.subplots(figsize=(8, 5))
  i = 0
  for log, name in zip(logs, names):
    for key in keys:
      if key not in log:
        avail = ', '.join(sorted(log))
        raise KeyError(f'{name} has no {key!r}; keys in that log: {avail}')
      points = [(s, v) for s, v in log[key] if s >= start_step]
      xs = [s for s, _ in points]
      ys = [v for _, v in points]
      # Evaluations are few: mark the points.
      marker = 'o' if key.startswith('val/') or len(xs) < 20 else None
      ax.plot(xs, ys, label=labels[i], marker=marker, linewidth=1.2)
      i += 1
  ax.set_xlabel('step')
  ax.set_ylabel(keys[0] if len(keys) == 1 else 'value')
  if log_y:
    ax.set_yscale('log')
  ax.grid(True, alpha=0.3)
  ax.legend()
  if title:
    ax.set_title(title)
  fig.tight_layout()
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f'save curve to: {out}')
    plt.close(fig)
  else:
    plt.show()
  return fig


def _config_batch(path: str):
  """global batch size from the workdir's config.json, if it is there."""
  cfg = os.path.join(os.path.dirname(os.path.abspath(path)), 'config.json')
  try:
    with open(cfg) as f:
      return int(json.load(f)['train']['global_batch_size'])
  except (OSError, KeyError, ValueError, TypeError):
    return None


def cal_train_time(paths: Sequence[str], logs: Sequence[Series],
                   batch_size=None) -> List[Dict[str, float]]:
  """Throughput summary per log (printed; also returned).

  metrics.jsonl has no timestamps: each training line has 'images_per_sec',
  the average since the run (or its last resume) started, compile time
  included. Seconds per step = global batch / images per second, the batch
  from --batch-size or the workdir's config.json.
  """
  summaries = []
  for path, log in zip(paths, logs):
    print(f'-----Analyze train time of {path}-----')
    ips = log.get('images_per_sec')
    if not ips:
      print('no "images_per_sec" in this log')
      continue
    values = [v for _, v in ips]
    last_step = ips[-1][0]
    summary = dict(steps=last_step, images_per_sec=values[-1],
                   max_images_per_sec=max(values),
                   min_images_per_sec=min(values))
    print(f'last step: {last_step}')
    print(f'images/s at the end (average of the run, compile included): '
          f'{values[-1]:.3f}')
    print(f'images/s over the logged points: min {min(values):.3f}, '
          f'max {max(values):.3f}')
    batch = batch_size or _config_batch(path)
    if batch:
      sec = batch / values[-1]
      summary.update(batch_size=batch, sec_per_step=sec,
                     total_hours=sec * last_step / 3600)
      print(f'global batch {batch}: {sec:.3f} s/step, about '
            f'{sec * last_step / 3600:.2f} h for {last_step} steps')
    else:
      print('global batch unknown (no config.json beside the log; pass '
            '--batch-size): no time per step')
    summaries.append(summary)
  return summaries
