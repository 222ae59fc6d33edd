"""Fuzz test of the COCO annotation readers (training loader and eval.py's).

Seeded mutations of a small valid annotation file (deleted keys, wrong
types, out-of-range ids and coordinates, bad RLE and polygons, truncated or
garbled text) must each either load or raise `CocoFormatError` naming the
file; any other exception is a failure. No image is decoded, no model runs.
"""

import copy
import json
import random

import numpy as np
import pycocotools.mask as mask_util
import pytest

from maskrcnn_jax import evaluation
from maskrcnn_jax.data import coco

NUM_MUTATIONS = 360


def _rle(h, w, seed):
  m = np.zeros((h, w), np.uint8, order='F')
  m[seed:seed + 10, 5:20] = 1
  r = mask_util.encode(np.asfortranarray(m))
  return {'size': [h, w], 'counts': r['counts'].decode('ascii')}


def valid_dataset():
  """3 images, 3 categories, polygon / RLE string / RLE list / crowd."""
  images = [dict(id=1, file_name='a.jpg', height=60, width=80),
            dict(id=2, file_name='b.jpg', height=64, width=48),
            dict(id=7, file_name='sub/c.png', height=40, width=40)]
  cats = [dict(id=1, name='cat'), dict(id=3, name='dog'),
          dict(id=10, name='bird', supercategory='animal')]
  uncompressed = [0] * 0
  uncompressed = [100, 50, 40 * 40 - 150]
  anns = [
      dict(id=1, image_id=1, category_id=1, bbox=[10, 10, 30, 20], area=600,
           iscrowd=0, segmentation=[[10, 10, 40, 10, 40, 30, 10, 30]]),
      dict(id=2, image_id=1, category_id=3, bbox=[5.5, 6, 15, 10.5],
           area=157.5, iscrowd=0, segmentation=_rle(60, 80, 6)),
      dict(id=3, image_id=2, category_id=10, bbox=[0, 0, 47, 63], area=2961,
           iscrowd=1, segmentation=_rle(64, 48, 2)),
      dict(id=4, image_id=2, category_id=1, bbox=[1, 2, 3, 4], area=12,
           iscrowd=0, segmentation=[[1, 2, 4, 2, 4, 6], [1, 2, 2, 2]]),
      dict(id=5, image_id=7, category_id=3, bbox=[2, 2, 10, 10], area=100,
           iscrowd=0, segmentation={'size': [40, 40],
                                    'counts': uncompressed}),
      dict(id=9, image_id=7, category_id=10, bbox=[30, 30, 0.5, 4], area=2,
           iscrowd=0, segmentation=[[30, 30, 30.5, 30, 30.5, 34]]),
  ]
  return dict(info={'description': 'fuzz'}, images=images, annotations=anns,
              categories=cats)


WRONG_VALUES = (None, 'x', '', 1.5, -1, 0, 10 ** 12, [], {}, True, [1, 2],
                [[1, 2, 3]], {'a': 1}, float('nan'), float('inf'), -1e9)


def _paths(tree, prefix=()):
  """Every (container path, key) of the tree."""
  out = []
  if isinstance(tree, dict):
    for k, v in tree.items():
      out.append(prefix + (k,))
      out += _paths(v, prefix + (k,))
  elif isinstance(tree, list):
    for i, v in enumerate(tree):
      out.append(prefix + (i,))
      out += _paths(v, prefix + (i,))
  return out


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def mutate(rng: random.Random):
  """(bytes of a mutated annotation file, description)."""
  data = valid_dataset()
  op = rng.choice(['delete', 'wrong_type', 'wrong_type', 'id', 'coords',
                   'rle', 'polygon', 'duplicate', 'truncate', 'garble',
                   'multi'])
  paths = _paths(data)
  if op == 'multi':
    desc = []
    for _ in range(rng.randint(2, 4)):
      path = rng.choice(_paths(data))
      parent = _get(data, path[:-1])
      parent[path[-1]] = copy.deepcopy(rng.choice(WRONG_VALUES))
      desc.append(path)
    return json.dumps(data).encode(), f'multi {desc}'
  if op == 'delete':
    path = rng.choice(paths)
    parent = _get(data, path[:-1])
    del parent[path[-1]]
    return json.dumps(data).encode(), f'delete {path}'
  if op == 'wrong_type':
    path = rng.choice(paths)
    value = copy.deepcopy(rng.choice(WRONG_VALUES))
    _get(data, path[:-1])[path[-1]] = value
    return json.dumps(data).encode(), f'set {path} = {value!r}'
  if op == 'id':
    section, key = rng.choice([('annotations', 'image_id'),
                               ('annotations', 'category_id'),
                               ('annotations', 'id'), ('images', 'id'),
                               ('categories', 'id')])
    entry = rng.choice(data[section])
    entry[key] = rng.choice([999, -5, 0, 2 ** 63, 3.0, '1', None])
    return json.dumps(data).encode(), f'{section} {key} = {entry[key]!r}'
  if op == 'coords':
    ann = rng.choice(data['annotations'])
    j = rng.randrange(4)
    ann['bbox'][j] = rng.choice([-3, -0.001, 1e9, 0, float('nan'),
                                 float('-inf'), 5000, 1e308])
    return json.dumps(data).encode(), f'bbox {ann["id"]} {ann["bbox"]}'
  if op == 'rle':
    ann = rng.choice(data['annotations'][1:3] + data['annotations'][4:5])
    seg = ann['segmentation']
    kind = rng.randrange(6)
    if kind == 0 and isinstance(seg['counts'], str):
      cut = rng.randrange(len(seg['counts']))
      seg['counts'] = seg['counts'][:cut]
    elif kind == 1:
      seg['counts'] = ''.join(rng.choice('!~ azAZ09{|}\\') for _ in range(8))
    elif kind == 2:
      seg['size'] = rng.choice([[1, 2], [60], 'x', [-1, 80], [60.5, 80]])
    elif kind == 3:
      seg['counts'] = rng.choice([[1, 2, 3], [-1, 5000], [1.5], 'x' * 3, 7])
    elif kind == 4:
      seg.pop(rng.choice(['size', 'counts']))
    else:
      s = seg['counts']
      if isinstance(s, str) and s:
        i = rng.randrange(len(s))
        seg['counts'] = s[:i] + chr(rng.randrange(32, 127)) + s[i + 1:]
    return json.dumps(data).encode(), f'rle {ann["id"]} {seg!r}'[:200]
  if op == 'polygon':
    ann = rng.choice([data['annotations'][i] for i in (0, 3, 5)])
    ann['segmentation'] = rng.choice([
        [], [[]], [[1, 2, 3]], [[1, 2, 3, 4, 5]], [['a', 1, 2, 3, 4, 5]],
        [[[1, 2], [3, 4], [5, 6]]], [[1, 2, 3, 4, 5, 6], 'x'],
        [[float('nan')] * 6], [[1e300] * 6], 'polygon', 5, [None],
        [[-10, -10, 1e5, 1e5, 3, 3]]])
    return json.dumps(data).encode(), f'polygon {ann["segmentation"]!r}'
  if op == 'duplicate':
    section = rng.choice(['images', 'annotations', 'categories'])
    data[section].append(copy.deepcopy(rng.choice(data[section])))
    return json.dumps(data).encode(), f'duplicate in {section}'
  text = json.dumps(data).encode()
  if op == 'truncate':
    cut = rng.randrange(len(text))
    return text[:cut], f'truncate at {cut}'
  pos = rng.randrange(len(text))  # garble
  junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
  return text[:pos] + junk + text[pos + 4:], f'garble at {pos}'


def _check(load, path, desc):
  try:
    load()
  except coco.CocoFormatError as e:
    assert str(path) in str(e), (desc, str(e))
    assert '\n' not in str(e), (desc, str(e))
    return 'error'
  except Exception as e:  # pylint: disable=broad-except
    pytest.fail(f'{desc}: {type(e).__name__}: {e}')
  return 'ok'


def test_valid_file_loads_in_both_readers(tmp_path):
  path = tmp_path / 'valid.json'
  path.write_text(json.dumps(valid_dataset()))
  ds = coco.load_coco(str(path), str(tmp_path), train=True,
                      check_files=False)
  assert len(ds) == 3
  gt = evaluation.load_coco_gt(str(path))
  assert sorted(gt.getImgIds()) == [1, 2, 7]


def test_mutated_annotation_files(tmp_path):
  rng = random.Random(1234)
  outcomes = {'ok': 0, 'error': 0}
  for n in range(NUM_MUTATIONS):
    text, desc = mutate(rng)
    path = tmp_path / f'mutant_{n}.json'
    path.write_bytes(text)
    desc = f'mutation {n} ({desc})'
    train = _check(lambda: coco.load_coco(str(path), str(tmp_path),
                                          train=True, check_files=False),
                   path, desc)
    val = _check(lambda: coco.load_coco(str(path), str(tmp_path),
                                        train=False, check_files=False),
                 path, desc)

    def eval_reader():
      gt = evaluation.load_coco_gt(str(path))
      # What COCOeval does with every ground-truth annotation.
      for ann in gt.dataset['annotations']:
        gt.annToRLE(ann)

    ev = _check(eval_reader, path, desc)
    if ev == 'ok':  # eval.py's reader checks at least what val's does
      assert val == 'ok', desc
    outcomes[train] += 1
  # The mutations reach both outcomes (a fuzz that only errors or only
  # loads tests little).
  assert outcomes['error'] > NUM_MUTATIONS // 2, outcomes
  assert outcomes['ok'] > 20, outcomes
