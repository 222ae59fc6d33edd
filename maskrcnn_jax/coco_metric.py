"""The COCO metric: boxes, masks and RPN proposals scored as MMDetection's
`CocoMetric` (mmdet/evaluation/metrics/coco_metric.py, 3.3.0).

    coco_gt = coco_metric.load_coco_gt('instances_val2017.json')
    metrics, tables = coco_metric.compute_metrics(coco_gt, results)
    metrics['bbox_mAP'], metrics['segm_mAP']

Scoring follows `CocoMetric` exactly: `results2json` (bbox `[x1, y1, w, h]`,
`category_id = cat_ids[label]`, segm entries with the box score and RLE
counts as str), segm evaluated without the `bbox` field (areas from the
masks), `params.maxDets = [100, 300, 1000]`, values rounded to 3 decimals,
`proposal` = COCOeval with `useCats=0` on the RPN proposals. Label `i` is the
i-th category id in ascending order.

Differences from MMDetection (deliberate):
  * Detections and masks also report the AR figures (`bbox_AR@100`, ...).
  * An empty result set is scored as COCOeval scores "no detections" (0 where
    there is ground truth, -1 where there is none) instead of MMDetection's
    logged error and missing metrics.
  * Per-class APs are stored as `<metric>_<class>_precision` (MMDetection
    drops the metric prefix, so segm overwrites bbox).

Running a model over a set is `maskrcnn_jax.evaluation`; this module needs
neither JAX nor a model.
"""

import contextlib
import copy
import io
import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRICS = ('bbox', 'segm', 'proposal')
PROPOSAL_NUMS = (100, 300, 1000)
# CocoMetric's `coco_metric_names`: item -> index into COCOeval.stats.
COCO_METRIC_NAMES = {
    'mAP': 0, 'mAP_50': 1, 'mAP_75': 2, 'mAP_s': 3, 'mAP_m': 4, 'mAP_l': 5,
    'AR@100': 6, 'AR@300': 7, 'AR@1000': 8, 'AR_s@1000': 9, 'AR_m@1000': 10,
    'AR_l@1000': 11,
}
DETECTION_ITEMS = tuple(COCO_METRIC_NAMES)
PROPOSAL_ITEMS = ('AR@100', 'AR@300', 'AR@1000', 'AR_s@1000', 'AR_m@1000',
                  'AR_l@1000')
CLASSWISE_HEADERS = ('category', 'mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m',
                     'mAP_l')

Log = Callable[[str], Any]


# ---------------------------------------------------------------------------
# Ground truth and result formatting.


def load_coco_gt(ann_file: str, verbose: bool = False) -> COCO:
  """pycocotools COCO object of an annotation file, validated as the
  training data (`data.coco.load_eval_annotations`: errors name the file
  and the id).

  Raises:
    FileNotFoundError: no such file.
    data.coco.CocoFormatError: not JSON, or a defect (one line naming the
      file and the offending id or value).
  """
  from maskrcnn_jax.data import coco as coco_data  # pylint: disable=g-import-not-at-top
  data = coco_data.load_eval_annotations(ann_file)
  coco = COCO()
  coco.dataset = data
  with _maybe_quiet(not verbose):
    coco.createIndex()
  return coco


def category_ids(coco_gt: COCO) -> List[int]:
  """Category ids in label order (ascending id)."""
  return sorted(int(c) for c in coco_gt.getCatIds())


def class_names(coco_gt: COCO) -> List[str]:
  """Category names in label order."""
  return [coco_gt.cats[c]['name'] for c in category_ids(coco_gt)]


def xyxy2xywh(bbox: np.ndarray) -> List[float]:
  """CocoMetric.xyxy2xywh: [x1, y1, x2 - x1, y2 - y1] of a float32 box."""
  b = np.asarray(bbox).tolist()
  return [b[0], b[1], b[2] - b[0], b[3] - b[1]]


def results2json(results: Sequence[Dict], cat_ids: Sequence[int]
                 ) -> Tuple[List[Dict], Optional[List[Dict]]]:
  """CocoMetric.results2json: COCO result entries of per-image results.

  Args:
    results: one dict per image with 'img_id', 'bboxes' (N, 4) XYXY in
      original pixels, 'scores' (N,), 'labels' (N,) 0-based and optionally
      'masks' (N RLE dicts; counts bytes or str).
    cat_ids: category id of each label.

  Returns:
    (bbox entries, segm entries or None when the results have no masks).
  """
  bbox_json, segm_json = [], None
  if results and 'masks' in results[0]:
    segm_json = []
  for result in results:
    image_id = result['img_id']
    labels, bboxes = result['labels'], result['bboxes']
    scores = result['scores']
    for i, label in enumerate(labels):
      bbox_json.append(dict(image_id=image_id, bbox=xyxy2xywh(bboxes[i]),
                            score=float(scores[i]),
                            category_id=cat_ids[int(label)]))
    if segm_json is None:
      continue
    masks = result['masks']
    mask_scores = result.get('mask_scores', scores)
    for i, label in enumerate(labels):
      rle = dict(masks[i])
      if isinstance(rle['counts'], bytes):
        rle['counts'] = rle['counts'].decode()
      segm_json.append(dict(image_id=image_id, bbox=xyxy2xywh(bboxes[i]),
                            score=float(mask_scores[i]),
                            category_id=cat_ids[int(label)],
                            segmentation=rle))
  return bbox_json, segm_json


# ---------------------------------------------------------------------------
# Scoring.


@contextlib.contextmanager
def _maybe_quiet(quiet: bool):
  if quiet:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  else:
    yield


def _round3(value) -> float:
  """CocoMetric's bbox/segm rounding: `round` of a numpy float64 (numpy's
  round-half-even of value * 1000, e.g. 0.5375 -> 0.538)."""
  return float(f'{round(np.float64(value), 3)}')


def _format3(value) -> float:
  """CocoMetric's proposal rounding: `float(f'{value:.3f}')` (correctly
  rounded decimal, e.g. 0.5375 -> 0.537)."""
  return float(f'{float(value):.3f}')


def _empty_results(coco_gt: COCO) -> COCO:
  """A result COCO object with no detections (loadRes fails on [])."""
  res = COCO()
  res.dataset = dict(images=list(coco_gt.dataset.get('images', [])),
                     categories=copy.deepcopy(
                         coco_gt.dataset.get('categories', [])),
                     annotations=[])
  with _maybe_quiet(True):
    res.createIndex()
  return res


def _classwise_rows(coco_eval: COCOeval, coco_gt: COCO,
                    cat_ids: Sequence[int]) -> List[List]:
  """Per-category [name, mAP, mAP_50, mAP_75, mAP_s, mAP_m, mAP_l] as
  CocoMetric (precision[:, :, k, area, -1]; NaN when a class has no GT)."""
  precisions = coco_eval.eval['precision']
  if len(cat_ids) != precisions.shape[2]:
    raise AssertionError('categories and precision table disagree')

  def mean_ap(p):
    p = p[p > -1]
    return float(round(np.mean(p), 3)) if p.size else float('nan')

  rows = []
  for idx, cat_id in enumerate(cat_ids):
    name = coco_gt.loadCats(cat_id)[0]['name']
    row = [name, mean_ap(precisions[:, :, idx, 0, -1])]
    for iou in (0, 5):
      row.append(mean_ap(precisions[iou, :, idx, 0, -1]))
    for area in (1, 2, 3):
      row.append(mean_ap(precisions[:, :, idx, area, -1]))
    rows.append(row)
  return rows


def format_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
  """Plain ASCII table (like terminaltables.AsciiTable)."""
  cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
  sep = '+' + '+'.join('-' * (w + 2) for w in widths) + '+'

  def line(r):
    return '| ' + ' | '.join(c.ljust(w) for c, w in zip(r, widths)) + ' |'

  out = [sep, line(cells[0]), sep] + [line(r) for r in cells[1:]] + [sep]
  return '\n'.join(out)


def coco_eval(coco_gt: COCO, entries: List[Dict], iou_type: str,
              cat_ids: Sequence[int], img_ids: Sequence[int],
              use_cats: bool = True, verbose: bool = True) -> COCOeval:
  """Runs COCOeval as CocoMetric does; returns it (stats, eval filled).

  Args:
    coco_gt: ground truth.
    entries: COCO result entries (results2json); segm entries keep their
      'bbox' here and lose it before loadRes (mask areas for S/M/L).
    iou_type: 'bbox' or 'segm'.
    cat_ids, img_ids: COCOeval params.
    use_cats: False for proposal recall.
    verbose: let pycocotools print its progress and summary.
  """
  with _maybe_quiet(not verbose):
    if entries:
      entries = [dict(e) for e in entries]
      if iou_type == 'segm':
        for e in entries:
          e.pop('bbox', None)
      coco_dt = coco_gt.loadRes(entries)
    else:
      coco_dt = _empty_results(coco_gt)
    ev = COCOeval(coco_gt, coco_dt, iou_type)
    ev.params.catIds = list(cat_ids)
    ev.params.imgIds = list(img_ids)
    ev.params.maxDets = list(PROPOSAL_NUMS)
    ev.params.iouThrs = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05))
                                    + 1, endpoint=True)
    if not use_cats:
      ev.params.useCats = 0
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  return ev


def compute_metrics(coco_gt: COCO, results: Sequence[Dict],
                    metrics: Sequence[str] = ('bbox', 'segm'),
                    proposals: Optional[Sequence[Dict]] = None,
                    img_ids: Optional[Sequence[int]] = None,
                    classwise: bool = False, out_dir: Optional[str] = None,
                    verbose: bool = True, log: Log = print
                    ) -> Tuple[Dict[str, float], Dict[str, Dict]]:
  """Scores per-image results as CocoMetric.compute_metrics.

  Args:
    coco_gt: ground truth.
    results: per-image dicts (see `results2json`); used for bbox and segm.
    metrics: any of 'bbox', 'segm', 'proposal'.
    proposals: per-image dicts with 'img_id', 'bboxes', 'scores' (labels
      optional) for 'proposal'.
    img_ids: images to score (default: every image of coco_gt).
    classwise: also per-class AP tables for bbox/segm.
    out_dir: if given, writes results.{bbox,segm,proposal}.json there.
    verbose: pycocotools' own output and the summary lines.
    log: where messages go.

  Returns:
    (metrics, tables): metrics maps 'bbox_mAP', ..., 'segm_AR_l@1000',
    proposal 'AR@100', ... (and '<metric>_<class>_precision' when
    classwise) to floats rounded to 3 decimals; tables maps 'bbox'/'segm'
    to {'headers': [...], 'rows': [...]} when classwise.
  """
  for m in metrics:
    if m not in METRICS:
      raise KeyError(f'metric should be one of {METRICS}, got {m!r}')
  cat_ids = category_ids(coco_gt)
  img_ids = list(coco_gt.getImgIds() if img_ids is None else img_ids)
  entries: Dict[str, Optional[List[Dict]]] = {}
  if 'bbox' in metrics or 'segm' in metrics:
    entries['bbox'], entries['segm'] = results2json(list(results), cat_ids)
    if 'segm' in metrics and entries['segm'] is None:
      if any(len(r['labels']) for r in results):
        raise KeyError('segm is not in results (no masks)')
      entries['segm'] = []
  if 'proposal' in metrics:
    if proposals is None:
      raise ValueError("metric 'proposal' needs the proposals")
    entries['proposal'], _ = results2json(
        [dict(p, labels=p.get('labels', np.zeros(len(p['scores']), int)))
         for p in proposals], cat_ids)
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
    for kind in ('bbox', 'segm', 'proposal'):
      if entries.get(kind) is not None:
        with open(os.path.join(out_dir, f'results.{kind}.json'), 'w') as f:
          json.dump(entries[kind], f)

  out: Dict[str, float] = {}
  tables: Dict[str, Dict] = {}
  for metric in metrics:
    if verbose:
      log(f'Evaluating {metric}...')
    if not entries[metric]:
      log(f'warning: no {metric} results for the whole set; scoring it as '
          'no detections (0 where there is ground truth, -1 elsewhere)')
    iou_type = 'bbox' if metric == 'proposal' else metric
    ev = coco_eval(coco_gt, entries[metric], iou_type, cat_ids, img_ids,
                   use_cats=metric != 'proposal', verbose=verbose)
    if metric == 'proposal':
      for item in PROPOSAL_ITEMS:
        out[item] = _format3(ev.stats[COCO_METRIC_NAMES[item]])
      continue
    if classwise:
      rows = _classwise_rows(ev, coco_gt, cat_ids)
      tables[metric] = dict(headers=list(CLASSWISE_HEADERS), rows=rows)
      for row in rows:
        out[f'{metric}_{row[0]}_precision'] = row[1]
      log(f'{metric} per-class AP:\n' + format_table(CLASSWISE_HEADERS, rows))
    for item in DETECTION_ITEMS:
      out[f'{metric}_{item}'] = _round3(ev.stats[COCO_METRIC_NAMES[item]])
    ap = ev.stats[:6]
    log(f'{metric}_mAP_copypaste: {ap[0]:.3f} {ap[1]:.3f} {ap[2]:.3f} '
        f'{ap[3]:.3f} {ap[4]:.3f} {ap[5]:.3f}')
  return out, tables


def _json_safe(x):
  if isinstance(x, dict):
    return {k: _json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_safe(v) for v in x]
  if isinstance(x, float) and not np.isfinite(x):
    return None
  return x


def write_json(path: str, obj) -> None:
  """JSON with NaN/inf as null."""
  with open(path, 'w') as f:
    json.dump(_json_safe(obj), f, indent=1)
