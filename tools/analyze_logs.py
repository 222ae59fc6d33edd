"""Curves and timing from training logs (metrics.jsonl), as MMDetection's
tools/analysis_tools/analyze_logs.py.

  python -m tools.analyze_logs plot_curve WORKDIR/metrics.jsonl \
      --keys loss_cls loss_mask --out losses.png
  python -m tools.analyze_logs plot_curve A/metrics.jsonl B/metrics.jsonl \
      --keys val/bbox_mAP val/segm_mAP --legend A_bbox A_segm B_bbox B_segm \
      --out ap.png
  python -m tools.analyze_logs cal_train_time WORKDIR/metrics.jsonl

metrics.jsonl (written by train.py) has one JSON object per line: 'step',
the losses ('total_loss', 'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls',
'loss_bbox', 'loss_mask', 'acc'), 'lr' and 'images_per_sec' every
train.log_every steps, and the evaluation metrics ('val/bbox_mAP',
'val/segm_mAP', ...) on separate lines at each evaluation. A key is plotted
against 'step' from every line that has it; keys are drawn in one figure
(one curve per log and key). A run resumed in the same workdir appends to
the same file; a step logged twice keeps its last value.
(From the repository root; `python tools/analyze_logs.py` where the package
is installed. The library side is `maskrcnn_jax.log_analysis`.)
"""

import argparse
import sys

from maskrcnn_jax import errors
from maskrcnn_jax.log_analysis import cal_train_time
from maskrcnn_jax.log_analysis import load_log
from maskrcnn_jax.log_analysis import plot_curve
from maskrcnn_jax.log_analysis import run_name


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
      description='Analyze metrics.jsonl training logs')
  sub = p.add_subparsers(dest='task', required=True)
  pc = sub.add_parser('plot_curve', help='plot curves from log files')
  pc.add_argument('json_logs', nargs='+', help='metrics.jsonl files')
  pc.add_argument('--keys', nargs='+', default=['total_loss'],
                  help='keys to plot (e.g. loss_cls lr val/bbox_mAP)')
  pc.add_argument('--legend', nargs='+', default=[],
                  help='one label per log and key')
  pc.add_argument('--title', default='')
  pc.add_argument('--backend', default='', help='matplotlib backend')
  pc.add_argument('--log-y', action='store_true', help='log-scale y axis')
  pc.add_argument('--start-step', type=int, default=0,
                  help='skip points before this step')
  pc.add_argument('--out', default='', help='output image (else shown)')
  ct = sub.add_parser('cal_train_time', help='throughput and time per step')
  ct.add_argument('json_logs', nargs='+')
  ct.add_argument('--batch-size', type=int, default=None,
                  help='global batch (default: from config.json)')
  args = p.parse_args(argv)
  try:
    logs = [load_log(path) for path in args.json_logs]
    if args.task == 'plot_curve':
      plot_curve(logs, [run_name(x) for x in args.json_logs], args.keys,
                 args.legend, args.title, args.out, args.backend,
                 args.log_y, args.start_step)
    else:
      cal_train_time(args.json_logs, logs, args.batch_size)
  except (FileNotFoundError, KeyError, ValueError) as e:
    print(f'error: {e.args[0] if isinstance(e, KeyError) else e}',
          file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(errors.main_guard(main))
