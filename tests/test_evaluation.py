"""Tests for maskrcnn_jax.evaluation and eval.py (COCO metrics)."""

import copy
import json
import os
import subprocess
import sys
import types

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskrcnn_jax import evaluation
from maskrcnn_jax.data import coco_classes
from maskrcnn_jax.testing import fixtures as fx

REPO = fx.repo_root()
# COCO 2017 category ids (1..90 without the 10 unused ones), label order.
COCO_IDS = [i for i in range(1, 91)
            if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
# Small images on small canvases keep the R-50 runs fast on CPU.
SMALL_OVERRIDES = ['input.test_scale=(320, 256)',
                   'input.canvases=((256, 320), (320, 256))']


def make_coco_set(root, num_images=3, seed=0, categories=None,
                  sizes=((240, 320), (320, 240), (200, 300))):
  """Writes root/images/*.png with cv2 shapes and root/ann.json (RLE GT).

  Returns (ann_path, image_dir).
  """
  rng = np.random.default_rng(seed)
  cats = categories or [dict(id=i, name=n) for i, n in
                        zip(COCO_IDS, coco_classes.COCO_CLASSES)]
  image_dir = os.path.join(root, 'images')
  os.makedirs(image_dir, exist_ok=True)
  images, anns = [], []
  for k in range(num_images):
    h, w = sizes[k % len(sizes)]
    image = np.full((h, w, 3), 40 + 10 * k, np.uint8)
    image_id = 100 + 7 * k  # not 0..n-1 on purpose
    for j in range(3):
      m = np.zeros((h, w), np.uint8)
      cx, cy = int(rng.integers(30, w - 30)), int(rng.integers(30, h - 30))
      if j % 2 == 0:
        bw, bh = int(rng.integers(10, 60)), int(rng.integers(10, 60))
        cv2.rectangle(m, (cx - bw // 2, cy - bh // 2),
                      (cx + bw // 2, cy + bh // 2), 1, -1)
      else:
        cv2.circle(m, (cx, cy), int(rng.integers(8, 40)), 1, -1)
      color = [int(c) for c in rng.integers(80, 255, 3)]
      image[m.astype(bool)] = color
      rle = mask_util.encode(np.asfortranarray(m))
      rle['counts'] = rle['counts'].decode()
      anns.append(dict(id=len(anns) + 1, image_id=image_id,
                       category_id=cats[(k + j) % len(cats)]['id'],
                       segmentation=rle,
                       area=float(mask_util.area(rle)),
                       bbox=[float(v) for v in mask_util.toBbox(rle)],
                       iscrowd=0))
    name = f'img_{k}.png'
    cv2.imwrite(os.path.join(image_dir, name), image)
    images.append(dict(id=image_id, file_name=name, height=h, width=w))
  ann_path = os.path.join(root, 'ann.json')
  with open(ann_path, 'w') as f:
    json.dump(dict(images=images, annotations=anns, categories=cats), f)
  return ann_path, image_dir


def gt_results(coco_gt, with_masks=True):
  """Per-image results equal to the ground truth (score 1)."""
  cat_ids = evaluation.category_ids(coco_gt)
  results = []
  for img_id in coco_gt.getImgIds():
    anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[img_id]))
    boxes = np.asarray([[a['bbox'][0], a['bbox'][1],
                         a['bbox'][0] + a['bbox'][2],
                         a['bbox'][1] + a['bbox'][3]] for a in anns],
                       np.float32).reshape(-1, 4)
    r = dict(img_id=img_id, bboxes=boxes,
             scores=np.ones(len(anns), np.float32),
             labels=np.asarray([cat_ids.index(a['category_id'])
                                for a in anns], np.int64))
    if with_masks:
      r['masks'] = [dict(coco_gt.annToRLE(a)) for a in anns]
    results.append(r)
  return results


def perturbed_results(coco_gt, seed=1):
  """A hand-made detection set: jittered GT, false positives, wrong
  classes, missed objects and an image without detections."""
  rng = np.random.default_rng(seed)
  results = gt_results(coco_gt)
  num_classes = len(evaluation.category_ids(coco_gt))
  out = []
  for k, r in enumerate(results):
    if k == len(results) - 1:
      out.append(dict(img_id=r['img_id'], bboxes=np.zeros((0, 4), np.float32),
                      scores=np.zeros(0, np.float32),
                      labels=np.zeros(0, np.int64), masks=[]))
      continue
    info = coco_gt.imgs[r['img_id']]
    h, w = info['height'], info['width']
    boxes, scores, labels, masks = [], [], [], []
    for i in range(len(r['labels'])):
      if rng.random() < 0.2:
        continue  # missed
      b = r['bboxes'][i] + rng.normal(0, 3, 4).astype(np.float32)
      m = mask_util.decode(r['masks'][i])
      m = np.roll(m, int(rng.integers(-3, 4)), axis=1)
      lab = r['labels'][i] if rng.random() > 0.2 else (
          (r['labels'][i] + 1) % num_classes)
      boxes.append(b)
      scores.append(rng.uniform(0.05, 1))
      labels.append(lab)
      masks.append(m)
    for _ in range(3):  # false positives
      x, y = rng.uniform(0, w - 20), rng.uniform(0, h - 20)
      boxes.append(np.asarray([x, y, x + 15, y + 18], np.float32))
      scores.append(rng.uniform(0.05, 1))
      labels.append(int(rng.integers(num_classes)))
      m = np.zeros((h, w), np.uint8)
      m[int(y):int(y) + 18, int(x):int(x) + 15] = 1
      masks.append(m)
    rles = [dict(mask_util.encode(np.asfortranarray(m.astype(np.uint8))))
            for m in masks]
    out.append(dict(img_id=r['img_id'],
                    bboxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                    scores=np.asarray(scores, np.float32),
                    labels=np.asarray(labels, np.int64), masks=rles))
  return out


@pytest.fixture(scope='module')
def coco_set(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('coco'))
  ann, image_dir = make_coco_set(root, num_images=4)
  return evaluation.load_coco_gt(ann), ann, image_dir


def test_results2json_format(coco_set):
  coco_gt, _, _ = coco_set
  results = gt_results(coco_gt)
  results[0]['masks'][0]['counts'] = results[0]['masks'][0]['counts'].encode()
  bbox, segm = evaluation.results2json(results, COCO_IDS)
  e = bbox[0]
  r = results[0]
  assert e['image_id'] == r['img_id']
  assert e['category_id'] == COCO_IDS[r['labels'][0]]
  b = r['bboxes'][0].tolist()
  assert e['bbox'] == [b[0], b[1], b[2] - b[0], b[3] - b[1]]
  assert isinstance(e['score'], float)
  assert isinstance(segm[0]['segmentation']['counts'], str)
  assert segm[0]['score'] == e['score']
  json.dumps(bbox), json.dumps(segm)


def test_perfect_predictions_give_ap_one(coco_set):
  coco_gt, _, _ = coco_set
  metrics, _ = evaluation.compute_metrics(coco_gt, gt_results(coco_gt),
                                          verbose=False)
  for kind in ('bbox', 'segm'):
    assert metrics[f'{kind}_mAP'] == 1.0
    assert metrics[f'{kind}_mAP_50'] == 1.0
    assert metrics[f'{kind}_mAP_75'] == 1.0
    assert metrics[f'{kind}_AR@100'] == 1.0
    for item in ('mAP_s', 'mAP_m', 'mAP_l'):
      assert metrics[f'{kind}_{item}'] in (1.0, -1.0)
  assert set(metrics) == {f'{k}_{i}' for k in ('bbox', 'segm')
                          for i in evaluation.DETECTION_ITEMS}


def test_perfect_predictions_through_evaluate(coco_set, tmp_path):
  """evaluate() with a prediction function returning the ground truth."""
  coco_gt, _, image_dir = coco_set
  by_size = {}
  for img_id in coco_gt.getImgIds():
    info = coco_gt.imgs[img_id]
    anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[img_id]))
    by_size[info['file_name']] = anns
  names = [coco_gt.imgs[i]['file_name'] for i in coco_gt.getImgIds()]
  cat_ids = evaluation.category_ids(coco_gt)
  calls = iter(names)

  def fn(images):
    dets = []
    for _ in images:
      anns = by_size[next(calls)]
      dets.append(types.SimpleNamespace(
          boxes=np.asarray([[a['bbox'][0], a['bbox'][1],
                             a['bbox'][0] + a['bbox'][2],
                             a['bbox'][1] + a['bbox'][3]] for a in anns]),
          scores=np.ones(len(anns)),
          labels=np.asarray([cat_ids.index(a['category_id'])
                             for a in anns]),
          masks=np.stack([coco_gt.annToMask(a) for a in anns])))
    return dets

  metrics = evaluation.evaluate(fn, coco_gt, image_dir, batch_size=3,
                                out_dir=str(tmp_path), progress=False,
                                verbose=False, log=lambda s: None)
  assert metrics['bbox_mAP'] == 1.0 and metrics['segm_mAP'] == 1.0
  for f in ('results.bbox.json', 'results.segm.json', 'metrics.json'):
    assert os.path.isfile(tmp_path / f)
  with open(tmp_path / 'metrics.json') as f:
    assert json.load(f) == metrics


def _reference_stats(coco_gt, entries, iou_type, use_cats=True):
  """COCOeval run directly (the reference figures)."""
  entries = copy.deepcopy(entries)
  if iou_type == 'segm':
    for e in entries:
      e.pop('bbox')
  dt = coco_gt.loadRes(entries)
  ev = COCOeval(coco_gt, dt, iou_type)
  ev.params.maxDets = [100, 300, 1000]
  if not use_cats:
    ev.params.useCats = 0
  ev.evaluate()
  ev.accumulate()
  ev.summarize()
  return ev


def test_agrees_with_pycocotools(coco_set, tmp_path):
  coco_gt, _, _ = coco_set
  results = perturbed_results(coco_gt)
  metrics, _ = evaluation.compute_metrics(coco_gt, results,
                                          out_dir=str(tmp_path),
                                          verbose=False)
  assert 0.05 < metrics['bbox_mAP'] < 0.95  # a non-trivial case
  for kind in ('bbox', 'segm'):
    with open(tmp_path / f'results.{kind}.json') as f:
      entries = json.load(f)
    ev = _reference_stats(coco_gt, entries, kind)
    for item, index in evaluation.COCO_METRIC_NAMES.items():
      # MMDetection: round() of numpy float64 (half-even on value * 1000).
      assert metrics[f'{kind}_{item}'] == float(round(ev.stats[index], 3)), (
          item)
  # Segm areas come from the masks (no bbox field at loadRes).
  with open(tmp_path / 'results.segm.json') as f:
    segm = json.load(f)
  with_box = coco_gt.loadRes(copy.deepcopy(segm))
  ev_box = COCOeval(coco_gt, with_box, 'segm')
  ev_box.params.maxDets = [100, 300, 1000]
  ev_box.evaluate()
  ev_box.accumulate()
  ev_box.summarize()
  ev_mask = _reference_stats(coco_gt, segm, 'segm')
  assert ev_box.stats[0] == pytest.approx(ev_mask.stats[0])  # overall AP


def test_empty_predictions(coco_set):
  coco_gt, _, _ = coco_set
  ids = coco_gt.getImgIds()
  empty = [dict(img_id=i, bboxes=np.zeros((0, 4), np.float32),
                scores=np.zeros(0, np.float32), labels=np.zeros(0, np.int64),
                masks=[]) for i in ids]
  logs = []
  metrics, _ = evaluation.compute_metrics(coco_gt, empty, verbose=False,
                                          log=logs.append)
  assert any('no bbox results' in m for m in logs)
  assert set(metrics) == {f'{k}_{i}' for k in ('bbox', 'segm')
                          for i in evaluation.DETECTION_ITEMS}
  for k, v in metrics.items():
    assert v in (0.0, -1.0), k
  assert metrics['bbox_mAP'] == 0.0 and metrics['segm_AR@100'] == 0.0
  # No results at all (no images run), with classwise tables.
  metrics2, tables = evaluation.compute_metrics(coco_gt, [], verbose=False,
                                                classwise=True,
                                                log=lambda s: None)
  assert metrics2['bbox_mAP'] == 0.0 and metrics2['segm_mAP'] == 0.0
  assert len(tables['segm']['rows']) == len(COCO_IDS)
  # Some images empty, others perfect.
  partial = gt_results(coco_gt)
  partial[1] = empty[1]
  metrics3, _ = evaluation.compute_metrics(coco_gt, partial, verbose=False)
  assert 0 < metrics3['bbox_AR@100'] < 1


def test_classwise_table(coco_set, tmp_path):
  coco_gt, _, _ = coco_set
  results = perturbed_results(coco_gt)
  logs = []
  metrics, tables = evaluation.compute_metrics(
      coco_gt, results, classwise=True, out_dir=str(tmp_path),
      verbose=False, log=logs.append)
  with open(tmp_path / 'results.bbox.json') as f:
    ev = _reference_stats(coco_gt, json.load(f), 'bbox')
  rows = tables['bbox']['rows']
  assert tables['bbox']['headers'] == list(evaluation.CLASSWISE_HEADERS)
  assert [r[0] for r in rows] == list(coco_classes.COCO_CLASSES)
  precision = ev.eval['precision']
  for k, row in enumerate(rows):
    p = precision[:, :, k, 0, -1]
    p = p[p > -1]
    if p.size:
      assert row[1] == round(np.mean(p), 3)
      assert metrics[f'bbox_{row[0]}_precision'] == row[1]
      p50 = precision[0, :, k, 0, -1]
      assert row[2] == round(np.mean(p50[p50 > -1]), 3)
    else:
      assert np.isnan(row[1])
  assert sum(not np.isnan(r[1]) for r in rows) >= 3
  table_text = [m for m in logs if 'bbox per-class AP' in m][0]
  assert '| category' in table_text and '| person' in table_text


def test_proposal_metric_matches_cocoeval_usecats0(coco_set, tmp_path):
  coco_gt, _, _ = coco_set
  rng = np.random.default_rng(3)
  proposals = []
  for r in gt_results(coco_gt, with_masks=False):
    n = 50
    info = coco_gt.imgs[r['img_id']]
    xy = rng.uniform(0, [info['width'] - 30, info['height'] - 30], (n, 2))
    wh = rng.uniform(5, 60, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    boxes[:len(r['bboxes'])] = r['bboxes'] + rng.normal(0, 2, r['bboxes'].shape)
    proposals.append(dict(img_id=r['img_id'], bboxes=boxes,
                          scores=rng.uniform(0, 1, n).astype(np.float32)))
  metrics, _ = evaluation.compute_metrics(coco_gt, [], metrics=('proposal',),
                                          proposals=proposals,
                                          out_dir=str(tmp_path),
                                          verbose=False)
  assert set(metrics) == set(evaluation.PROPOSAL_ITEMS)
  with open(tmp_path / 'results.proposal.json') as f:
    entries = json.load(f)
  assert len(entries) == 50 * len(proposals)
  ev = _reference_stats(coco_gt, entries, 'bbox', use_cats=False)
  for item in evaluation.PROPOSAL_ITEMS:
    # MMDetection: float(f'{stat:.3f}') for proposals.
    stat = ev.stats[evaluation.COCO_METRIC_NAMES[item]]
    assert metrics[item] == float(f'{stat:.3f}')
  assert metrics['AR@100'] > 0.3


def test_missing_image_and_class_mismatch(coco_set, tmp_path):
  coco_gt, _, image_dir = coco_set
  with pytest.raises(FileNotFoundError, match='img_0.png'):
    evaluation.image_paths(coco_gt, str(tmp_path), coco_gt.getImgIds())
  with pytest.raises(ValueError, match='80 categories but the model has 3'):
    evaluation.check_classes(coco_gt, ['a', 'b', 'c'])
  assert evaluation.image_paths(coco_gt, image_dir, coco_gt.getImgIds()[:1])


# ---------------------------------------------------------------------------
# The model (R-50-FPN fixture weights, small canvases).


@pytest.fixture(scope='module')
def r50_predictor():
  from maskrcnn_jax import config as config_lib
  from maskrcnn_jax import predictor as predictor_lib
  from maskrcnn_jax.convert import mmdet
  from maskrcnn_jax.models import build
  config = config_lib.load_config(fx.config_path('r50_fpn'), SMALL_OVERRIDES)
  variables = mmdet.state_dict_to_variables(
      fx.state_dict('r50_fpn'), config,
      expected=build.abstract_variables(config))
  return predictor_lib.Predictor(config, variables, fx.coco_classes(),
                                 batch_size=2)


def test_pipelined_inference_matches_predictor(coco_set, r50_predictor):
  """run_inference (dispatch/fetch overlap, padded last batch, worker pool)
  gives what Predictor.predict gives, proposals included."""
  from maskrcnn_jax import preprocess
  coco_gt, _, image_dir = coco_set
  ids = coco_gt.getImgIds()[:3]  # 2 canvases; partial batches
  results, proposals = evaluation.run_inference(
      r50_predictor, coco_gt, image_dir, ids, proposals=True, workers=1,
      progress=False)
  assert [r['img_id'] for r in results] == ids
  assert [p['img_id'] for p in proposals] == ids
  images = [preprocess.read_image(os.path.join(
      image_dir, coco_gt.imgs[i]['file_name'])) for i in ids]
  dets = r50_predictor.predict(images)
  assert sum(len(r['labels']) for r in results) > 0  # not vacuous
  for r, d in zip(results, dets):
    np.testing.assert_allclose(r['bboxes'], d.boxes, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(r['scores'], d.scores)
    np.testing.assert_array_equal(r['labels'], d.labels)
    assert len(r['masks']) == len(d.masks)
    if len(d.masks):
      np.testing.assert_array_equal(
          np.moveaxis(mask_util.decode(r['masks']), -1, 0), d.masks)
  # Proposals: the RPN-only program gives the same boxes (first image).
  prepared = r50_predictor.prepare(images[0])
  out = r50_predictor.run_device([prepared], outputs='proposals')
  pb, ps = r50_predictor.unpad_proposals(out, 0, prepared)
  np.testing.assert_allclose(proposals[0]['bboxes'], pb, rtol=1e-5,
                             atol=1e-3)
  np.testing.assert_allclose(proposals[0]['scores'], ps, rtol=1e-5,
                             atol=1e-6)
  assert len(pb) > 100 and np.all(np.diff(ps) <= 0)
  # Training-loop style: explicit variables, proposals only.
  metrics = evaluation.evaluate(
      r50_predictor, coco_gt, image_dir, img_ids=ids[:1],
      variables=r50_predictor.variables, metrics=('proposal',),
      progress=False, verbose=False, log=lambda s: None)
  assert set(metrics) == set(evaluation.PROPOSAL_ITEMS)


def test_eval_py_end_to_end(tmp_path):
  root = str(tmp_path)
  ann, image_dir = make_coco_set(root, num_images=3, seed=5)
  pth = fx.write_pth('r50_fpn', os.path.join(root, 'r50.pth'))
  ckpt = os.path.join(root, 'ckpt')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  config = fx.config_path('r50_fpn')
  subprocess.run([sys.executable, '-m', 'maskrcnn_jax.convert', '--config',
                  config, '--checkpoint', pth, '--out', ckpt], check=True,
                 cwd=REPO, env=env, capture_output=True)
  os.remove(pth)
  out_dir = os.path.join(root, 'out')
  show_dir = os.path.join(root, 'show')
  cmd = [sys.executable, 'eval.py', '--config', config, '--checkpoint', ckpt,
         '--ann', ann, '--images', image_dir, '--max-images', '2',
         '--out-dir', out_dir, '--classwise', '--proposals', '--show-dir',
         show_dir, '--batch-size', '2', '--workers', '1', '--no-progress']
  for o in SMALL_OVERRIDES:
    cmd.append(f'--config.{o}')
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,
                        text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'bbox_mAP_copypaste' in proc.stdout
  assert '| category' in proc.stdout
  with open(os.path.join(out_dir, 'metrics.json')) as f:
    metrics = json.load(f)
  expected = ({f'{k}_{i}' for k in ('bbox', 'segm')
               for i in evaluation.DETECTION_ITEMS} |
              set(evaluation.PROPOSAL_ITEMS))
  assert expected <= set(metrics)
  for k in expected:
    v = metrics[k]
    assert np.isfinite(v) and (v == -1.0 or 0.0 <= v <= 1.0), (k, v)
  gt = COCO(ann)
  evaluated = set(gt.getImgIds()[:2])
  for kind in ('bbox', 'segm', 'proposal'):
    with open(os.path.join(out_dir, f'results.{kind}.json')) as f:
      entries = json.load(f)
    assert {e['image_id'] for e in entries} <= evaluated
    assert all(e['category_id'] in COCO_IDS for e in entries)
    if kind == 'segm':
      assert all(isinstance(e['segmentation']['counts'], str)
                 for e in entries)
  with open(os.path.join(out_dir, 'classwise.json')) as f:
    assert len(json.load(f)['bbox']['rows']) == 80
  assert sorted(os.listdir(show_dir)) == ['img_0.png', 'img_1.png']
  # Class-count mismatch: a clear error, exit status 2.
  ann3, _ = make_coco_set(os.path.join(root, 'three'), num_images=1,
                          categories=[dict(id=1, name='a'),
                                      dict(id=2, name='b'),
                                      dict(id=5, name='c')])
  proc = subprocess.run(cmd[:cmd.index('--ann')] + ['--ann', ann3, '--images',
                                                    image_dir], cwd=REPO,
                        env=env, capture_output=True, text=True)
  assert proc.returncode == 2
  assert '3 categories' in proc.stderr and 'num_classes=80' in proc.stderr
