"""Curves and timing from training logs (metrics.jsonl), as MMDetection's
tools/analysis_tools/analyze_logs.py.

  python -m tools.analyze_logs plot_curve WORKDIR/metrics.jsonl \
      --keys loss_cls loss_mask --out losses.png
  python -m tools.analyze_logs plot_curve A/metrics.jsonl B/metrics.jsonl \
      --keys val/bbox_mAP val/segm_mAP --legend A_bbox A_segm B_bbox B_segm \
      --out ap.png
  python -m tools.analyze_logs cal_train_time WORKDIR/metrics.jsonl

The log format (metrics.jsonl, written by train.py) and how keys are read
are described in `maskrcnn_jax.log_analysis`, the library side.
(From the repository root; `python tools/analyze_logs.py` where the package
is installed.)
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
  # A missing log, key or bad legend: one line `error: ...`, status 2
  # (errors.main_guard), as in every entry point.
  logs = [load_log(path) for path in args.json_logs]
  if args.task == 'plot_curve':
    plot_curve(logs, [run_name(x) for x in args.json_logs], args.keys,
               args.legend, args.title, args.out, args.backend,
               args.log_y, args.start_step)
  else:
    cal_train_time(args.json_logs, logs, args.batch_size)
  return 0


if __name__ == '__main__':
  sys.exit(errors.main_guard(main))
