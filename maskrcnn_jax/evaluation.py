"""COCO evaluation of boxes, masks and RPN proposals, as MMDetection's
`CocoMetric` (mmdet/evaluation/metrics/coco_metric.py, 3.3.0).

    coco_gt = evaluation.load_coco_gt('instances_val2017.json')
    metrics = evaluation.evaluate(predictor, coco_gt, 'val2017')
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
  * With `max_images`, only the evaluated images are scored.

Inference is pipelined: images are read and resized by a thread pool, the
device step of batch i+1 is dispatched (asynchronously) before the outputs
of batch i are fetched, and mask pasting + RLE encoding (+ drawing) run in a
process pool. This module imports no JAX itself, so the worker processes
stay light; the predictor is passed in.
"""

import collections
import concurrent.futures
import contextlib
import copy
import io
import json
import multiprocessing
import os
import time
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Optional,
                    Sequence, Tuple)

import cv2
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
import tqdm

from maskrcnn_jax import masks as mask_ops
from maskrcnn_jax import preprocess
from maskrcnn_jax import visualize

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
  and the id)."""
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


# ---------------------------------------------------------------------------
# Inference (pipelined).


def _host_job(job: Dict) -> Optional[List[Dict]]:
  """Worker: paste + RLE-encode one image's masks, optionally draw it.

  Runs in a worker process (or inline); needs no JAX.
  """
  masks = None
  if job['mask_logits'] is not None:
    masks = mask_ops.paste_mask_logits(job['mask_logits'], job['boxes'],
                                       job['ori_hw'], job['mask_thr'])
  elif job.get('masks') is not None:
    masks = job['masks']
  show = job.get('show')
  if show is not None:
    image = preprocess.read_image(show['image_path'])
    drawn = visualize.draw_detections(
        image[..., ::-1], job['boxes'], job['scores'], job['labels'], masks,
        show['class_names'], show['score_thr'])
    cv2.imwrite(show['out_path'], drawn[..., ::-1])
  if not job['encode'] or masks is None:
    return None
  return mask_ops.encode_rle(masks)


def default_workers() -> int:
  """Host post-processing processes: half the CPUs, 1..8."""
  return max(1, min(8, (os.cpu_count() or 2) // 2))


def _make_executor(workers: int) -> concurrent.futures.Executor:
  # 'spawn': the parent runs JAX (threads), so forking it is unsafe.
  return concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context('spawn'))


class _InlineExecutor(concurrent.futures.Executor):
  """Runs jobs at submission (workers=0)."""

  def submit(self, fn, /, *args, **kwargs):
    f = concurrent.futures.Future()
    try:
      f.set_result(fn(*args, **kwargs))
    except BaseException as e:  # pylint: disable=broad-except
      f.set_exception(e)
    return f


def image_paths(coco_gt: COCO, image_dir: str,
                img_ids: Sequence[int]) -> List[str]:
  """Paths of the images; FileNotFoundError naming the missing ones."""
  paths = [os.path.join(image_dir, coco_gt.imgs[i]['file_name'])
           for i in img_ids]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    shown = ', '.join(missing[:5]) + (', ...' if len(missing) > 5 else '')
    raise FileNotFoundError(
        f'{len(missing)} of {len(paths)} images of the annotation file are '
        f'missing under {image_dir}: {shown}')
  return paths


def _prefetch(fn: Callable, items: Sequence, threads: int,
              depth: int) -> Iterator:
  """fn(item) for each item, in order, computed `depth` ahead by threads."""
  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    queue = collections.deque()
    it = iter(items)
    for item in it:
      queue.append(pool.submit(fn, item))
      if len(queue) >= depth:
        break
    while queue:
      result = queue.popleft().result()
      for item in it:
        queue.append(pool.submit(fn, item))
        break
      yield result


def _canvas_batches(stream: Iterable[Tuple[int, Any]], batch_size: int
                    ) -> Iterator[List[Tuple[int, Any]]]:
  """Groups (index, prepared) by canvas shape into batches of batch_size;
  partial batches are flushed at the end."""
  buckets: Dict[tuple, List] = {}
  for index, prepared in stream:
    bucket = buckets.setdefault(prepared.canvas.shape, [])
    bucket.append((index, prepared))
    if len(bucket) == batch_size:
      yield bucket
      buckets[prepared.canvas.shape] = []
  for bucket in buckets.values():
    if bucket:
      yield bucket


def run_inference(predictor, coco_gt: COCO, image_dir: str,
                  img_ids: Sequence[int], *, detections: bool = True,
                  masks: bool = True, proposals: bool = False,
                  variables=None, show_dir: Optional[str] = None,
                  show_score_thr: float = 0.3,
                  workers: Optional[int] = None, loader_threads: int = 2,
                  executor: Optional[concurrent.futures.Executor] = None,
                  progress: bool = True
                  ) -> Tuple[List[Dict], List[Dict]]:
  """Runs the model over the images; per-image results in img_ids order.

  Args:
    predictor: a `maskrcnn_jax.predictor.Predictor`.
    coco_gt: ground truth (for the image list).
    image_dir: folder holding the images' `file_name`s.
    img_ids: images to run.
    detections: compute boxes (and `masks`: RLE masks).
    proposals: also return the RPN proposals.
    variables: run with these variables instead of the predictor's.
    show_dir: write drawn detections there (<file stem>.png).
    show_score_thr: minimum score of drawn detections.
    workers: processes for mask pasting/encoding/drawing (default
      `default_workers()`; 0: in this process).
    loader_threads: threads reading and resizing images.
    executor: use this executor for the host jobs instead (not shut down).
    progress: tqdm progress bar.

  Returns:
    (results, proposal_results): lists of per-image dicts ('img_id',
    'bboxes', 'scores', 'labels'[, 'masks']); empty lists for what was not
    asked.
  """
  img_ids = list(img_ids)
  paths = image_paths(coco_gt, image_dir, img_ids)
  if not (detections or proposals):
    raise ValueError('nothing to compute')
  outputs = ('both' if detections and proposals else
             'detections' if detections else 'proposals')
  if variables is not None:
    variables = predictor.replicate(variables)
  if show_dir:
    from maskrcnn_jax import output_paths  # pylint: disable=g-import-not-at-top
    show_paths = [os.path.join(show_dir, n)
                  for n in output_paths.output_names(paths)]
    output_paths.check_no_overwrite(paths, show_paths)
    os.makedirs(show_dir, exist_ok=True)
  mask_thr = float(predictor.config.test.mask_thr_binary)
  class_names_ = list(predictor.class_names)
  results: List[Optional[Dict]] = [None] * len(img_ids)
  proposal_results: List[Optional[Dict]] = [None] * len(img_ids)
  warned_size = []

  def load(index):
    image = preprocess.read_image(paths[index])
    info = coco_gt.imgs[img_ids[index]]
    if ('height' in info and 'width' in info and not warned_size and
        tuple(image.shape[:2]) != (info['height'], info['width'])):
      warned_size.append(index)
      tqdm.tqdm.write(f'warning: {paths[index]} is {image.shape[1]}x'
                      f'{image.shape[0]} but the annotation file says '
                      f'{info["width"]}x{info["height"]}')
    return index, predictor.prepare(image)

  own_executor = executor is None
  if own_executor:
    workers = default_workers() if workers is None else workers
    executor = _make_executor(workers) if workers > 0 else _InlineExecutor()
  pending = collections.deque()  # (index, future) of host jobs
  max_pending = 4 * predictor.batch_size + 8
  bar = tqdm.tqdm(total=len(img_ids), desc='eval', unit='img',
                  disable=not progress)

  def collect_one():
    index, future = pending.popleft()
    rles = future.result()
    if rles is not None:
      results[index]['masks'] = rles
    bar.update(1)

  def consume(step, batch):
    out = predictor.fetch(step)
    for j, (index, prepared) in enumerate(batch):
      if proposals:
        pboxes, pscores = predictor.unpad_proposals(out, j, prepared)
        proposal_results[index] = dict(
            img_id=img_ids[index], bboxes=pboxes, scores=pscores,
            labels=np.zeros(len(pscores), np.int64))
      if not detections:
        bar.update(1)
        continue
      boxes, scores, labels, logits = predictor.unpad(out, j, prepared)
      results[index] = dict(img_id=img_ids[index], bboxes=boxes,
                            scores=scores, labels=labels)
      if masks:
        results[index]['masks'] = []
      show = None
      if show_dir:
        show = dict(image_path=paths[index], out_path=show_paths[index],
                    class_names=class_names_, score_thr=show_score_thr)
      if (masks and len(boxes)) or show is not None:
        job = dict(boxes=boxes, scores=scores, labels=labels,
                   mask_logits=logits if len(boxes) else None,
                   ori_hw=tuple(prepared.ori_hw), mask_thr=mask_thr,
                   encode=masks, show=show)
        pending.append((index, executor.submit(_host_job, job)))
        while len(pending) > max_pending:
          collect_one()
      else:
        bar.update(1)

  try:
    stream = _prefetch(load, range(len(img_ids)), loader_threads,
                       depth=2 * predictor.batch_size + 2)
    previous = None
    for batch in _canvas_batches(stream, predictor.batch_size):
      # Dispatch batch i+1 before fetching and post-processing batch i.
      step = predictor.dispatch([p for _, p in batch], outputs, variables)
      if previous is not None:
        consume(*previous)
      previous = (step, batch)
    if previous is not None:
      consume(*previous)
    while pending:
      collect_one()
  finally:
    bar.close()
    if own_executor:
      executor.shutdown(wait=True, cancel_futures=True)
  return ([r for r in results if r is not None],
          [p for p in proposal_results if p is not None])


def _run_function(fn: Callable, coco_gt: COCO, image_dir: str,
                  img_ids: Sequence[int], batch_size: int, masks: bool,
                  progress: bool) -> List[Dict]:
  """Results of `fn(list of BGR images) -> list of detections` objects
  (attributes boxes, scores, labels[, masks] in original pixels)."""
  paths = image_paths(coco_gt, image_dir, img_ids)
  results = []
  for start in tqdm.trange(0, len(paths), batch_size, desc='eval',
                           unit='batch', disable=not progress):
    chunk = list(range(start, min(start + batch_size, len(paths))))
    dets = fn([preprocess.read_image(paths[i]) for i in chunk])
    for i, det in zip(chunk, dets):
      r = dict(img_id=img_ids[i],
               bboxes=np.asarray(det.boxes, np.float32).reshape(-1, 4),
               scores=np.asarray(det.scores, np.float32).reshape(-1),
               labels=np.asarray(det.labels).astype(np.int64).reshape(-1))
      if masks:
        r['masks'] = mask_ops.encode_rle(np.asarray(det.masks, bool))
      results.append(r)
  return results


def select_images(coco_gt: COCO, max_images: Optional[int] = None
                  ) -> List[int]:
  """The annotation file's image ids in file order, the first max_images."""
  ids = list(coco_gt.getImgIds())
  return ids[:max_images] if max_images is not None else ids


def check_classes(coco_gt: COCO, model_class_names: Sequence[str],
                  log: Log = print) -> None:
  """Error if the class counts differ; warning if the names differ."""
  names = class_names(coco_gt)
  if len(names) != len(model_class_names):
    raise ValueError(
        f'the dataset has {len(names)} categories but the model has '
        f'{len(model_class_names)} classes; evaluate a checkpoint trained '
        'on these categories (and a config with model.num_classes='
        f'{len(names)})')
  differ = [(i, a, b) for i, (a, b) in enumerate(zip(names, model_class_names))
            if a != b]
  if differ:
    i, a, b = differ[0]
    log(f'warning: {len(differ)} class names differ between the dataset and '
        f'the model (label {i}: {a!r} vs {b!r}); labels are mapped by order '
        '(ascending category id)')


def evaluate(predictor, coco_gt: COCO, image_dir: str, *, variables=None,
             metrics: Sequence[str] = ('bbox', 'segm'),
             classwise: bool = False, max_images: Optional[int] = None,
             img_ids: Optional[Sequence[int]] = None,
             out_dir: Optional[str] = None, show_dir: Optional[str] = None,
             show_score_thr: float = 0.3, workers: Optional[int] = None,
             loader_threads: int = 2, batch_size: int = 1,
             executor: Optional[concurrent.futures.Executor] = None,
             progress: bool = True, verbose: bool = True,
             log: Log = print) -> Dict[str, float]:
  """Runs a model over a COCO-format set and scores it as CocoMetric.

  Callable from a training loop: build one `Predictor` (its compiled
  programs are reused) and pass the current parameters as `variables`.

  Args:
    predictor: a `Predictor`, or a function mapping a list of uint8 BGR
      images to objects with boxes (N, 4) XYXY, scores, labels (0-based)
      and masks (N, H, W) at original resolution (no proposals then).
    coco_gt: ground truth (`load_coco_gt`).
    image_dir: folder of the images.
    variables: model variables to use instead of the predictor's.
    metrics: any of 'bbox', 'segm', 'proposal'.
    classwise: per-class AP tables (printed; in out_dir/classwise.json).
    max_images: only the first max_images images (file order).
    img_ids: explicit image ids (overrides max_images).
    out_dir: writes results.{bbox,segm,proposal}.json, metrics.json (and
      classwise.json) there.
    show_dir: drawn detections, one PNG per image.
    show_score_thr: minimum score of drawn detections.
    workers, loader_threads, executor: see `run_inference`.
    batch_size: images per call when `predictor` is a function.
    progress: progress bar; verbose: pycocotools' output.
    log: where messages go.

  Returns:
    Flat metrics dict (see `compute_metrics`).
  """
  metrics = tuple(metrics)
  for m in metrics:
    if m not in METRICS:
      raise KeyError(f'metric should be one of {METRICS}, got {m!r}')
  if img_ids is None:
    img_ids = select_images(coco_gt, max_images)
  img_ids = list(img_ids)
  if not img_ids:
    raise ValueError('no images to evaluate')
  detections = 'bbox' in metrics or 'segm' in metrics or bool(show_dir)
  want_masks = 'segm' in metrics
  start = time.perf_counter()
  if hasattr(predictor, 'dispatch'):
    check_classes(coco_gt, predictor.class_names, log)
    results, proposals = run_inference(
        predictor, coco_gt, image_dir, img_ids, detections=detections,
        masks=want_masks, proposals='proposal' in metrics,
        variables=variables, show_dir=show_dir,
        show_score_thr=show_score_thr, workers=workers,
        loader_threads=loader_threads, executor=executor, progress=progress)
  elif callable(predictor):
    if 'proposal' in metrics or show_dir or variables is not None:
      raise ValueError('a prediction function supports bbox/segm only')
    results = _run_function(predictor, coco_gt, image_dir, img_ids,
                            batch_size, want_masks, progress)
    proposals = []
  else:
    raise TypeError(f'expected a Predictor or a function, got {predictor!r}')
  elapsed = time.perf_counter() - start
  log(f'inference: {len(img_ids)} images in {elapsed:.1f} s '
      f'({len(img_ids) / elapsed:.2f} images/s)')
  out, tables = compute_metrics(
      coco_gt, results, metrics=metrics, proposals=proposals,
      img_ids=img_ids, classwise=classwise, out_dir=out_dir,
      verbose=verbose, log=log)
  if out_dir:
    write_json(os.path.join(out_dir, 'metrics.json'), out)
    if classwise:
      write_json(os.path.join(out_dir, 'classwise.json'), tables)
  return out


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


# ---------------------------------------------------------------------------
# Command line (eval.py).


def run_eval(config_path: str, checkpoint: str, ann: Optional[str] = None,
             images: Optional[str] = None, out_dir: Optional[str] = None,
             classwise: bool = False, show_dir: Optional[str] = None,
             show_score_thr: float = 0.3, batch_size: Optional[int] = None,
             max_images: Optional[int] = None, proposals: bool = False,
             metrics: Optional[Sequence[str]] = None,
             workers: Optional[int] = None, dtype: Optional[str] = None,
             overrides: Sequence[str] = (), progress: bool = True,
             log: Log = print,
             skip_bad_images: bool = False) -> Dict[str, float]:
  """eval.py: loads config + checkpoint, evaluates, prints the metrics."""
  from maskrcnn_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax import predictor as predictor_lib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(config_path, overrides)
  ann = ann or config.data.val_ann
  images = images or config.data.val_images
  if not os.path.isfile(ann):
    raise FileNotFoundError(f'annotation file not found: {ann} (pass --ann)')
  if not os.path.isdir(images):
    raise FileNotFoundError(f'image folder not found: {images} '
                            '(pass --images)')
  metrics = list(metrics or ('bbox', 'segm'))
  if proposals and 'proposal' not in metrics:
    metrics.append('proposal')
  coco_gt = load_coco_gt(ann)
  num_cats = len(coco_gt.getCatIds())
  if num_cats != config.model.num_classes:
    raise ValueError(
        f'{ann} has {num_cats} categories but the config has '
        f'model.num_classes={config.model.num_classes}; the checkpoint must '
        'be trained on the dataset\'s categories')
  from maskrcnn_jax.data import coco as coco_data  # pylint: disable=g-import-not-at-top
  img_ids, skipped = coco_data.check_eval_images(
      coco_gt, images, select_images(coco_gt, max_images), skip_bad_images,
      log)
  if batch_size is None:
    batch_size = jax.local_device_count()
  predictor = predictor_lib.Predictor.from_checkpoint(
      config, checkpoint, batch_size=batch_size, dtype=dtype)
  log(f'evaluating {checkpoint} on {ann} ({images}); {metrics}; '
      f'batch {batch_size} over {predictor.mesh.size} device(s)')
  result = evaluate(predictor, coco_gt, images, metrics=metrics,
                    classwise=classwise, img_ids=img_ids,
                    out_dir=out_dir, show_dir=show_dir,
                    show_score_thr=show_score_thr, workers=workers,
                    progress=progress, log=log)
  if skipped:
    result = coco_data.note_skipped_images(result, skipped, out_dir, log)
  width = max(len(k) for k in result)
  log('\n'.join(f'{k.ljust(width)}  {v}' for k, v in result.items()
                if not k.endswith('_precision')))
  if out_dir:
    log(f'results and metrics -> {out_dir}')
  return result
