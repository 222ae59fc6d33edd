"""Running a detector over a COCO-format set and scoring it
(`maskrcnn_jax.coco_metric`, MMDetection's `CocoMetric`).

    coco_gt = evaluation.load_coco_gt('instances_val2017.json')
    metrics = evaluation.evaluate(predictor, coco_gt, 'val2017')
    metrics['bbox_mAP'], metrics['segm_mAP']

With `max_images`, only the evaluated images are scored.

Inference is pipelined: images are read and resized by a thread pool, the
device step of batch i+1 is dispatched (asynchronously) before the outputs
of batch i are fetched, and mask pasting + RLE encoding (+ drawing) run in a
process pool. This module imports no JAX itself, so the worker processes
stay light; the predictor is passed in. The eval command (eval.py) is
`maskrcnn_jax.cli.eval`.
"""

import collections
import concurrent.futures
import multiprocessing
import os
import time
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Optional,
                    Sequence, Tuple)

import cv2
import numpy as np
from pycocotools.coco import COCO
import tqdm

from maskrcnn_jax import masks as mask_ops
from maskrcnn_jax import preprocess
from maskrcnn_jax import visualize
# The metric's names, re-exported: evaluation.load_coco_gt, ... keep working.
from maskrcnn_jax.coco_metric import category_ids  # pylint: disable=unused-import
from maskrcnn_jax.coco_metric import class_names
from maskrcnn_jax.coco_metric import CLASSWISE_HEADERS  # pylint: disable=unused-import
from maskrcnn_jax.coco_metric import COCO_METRIC_NAMES  # pylint: disable=unused-import
from maskrcnn_jax.coco_metric import compute_metrics
from maskrcnn_jax.coco_metric import DETECTION_ITEMS  # pylint: disable=unused-import
from maskrcnn_jax.coco_metric import format_table  # pylint: disable=unused-import
from maskrcnn_jax.coco_metric import load_coco_gt  # pylint: disable=unused-import
from maskrcnn_jax.coco_metric import METRICS
from maskrcnn_jax.coco_metric import PROPOSAL_ITEMS  # pylint: disable=unused-import
from maskrcnn_jax.coco_metric import results2json  # pylint: disable=unused-import
from maskrcnn_jax.coco_metric import write_json

Log = Callable[[str], Any]


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
    show_dir: write drawn detections there (<file stem>.png, distinct names
      for inputs sharing a stem: `output_paths.output_names`).
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
