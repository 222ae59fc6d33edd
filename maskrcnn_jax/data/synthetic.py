"""Synthetic COCO-format instance dataset of coloured shapes.

    python -m maskrcnn_jax.data.synthetic --out DIR --num-train N \\
        --num-val M --image-size S [--seed 0] [--format jpg|png] \\
        [--radius-range LO HI] [--num-shapes LO HI] [--classes NAME ...]

writes

    DIR/annotations/instances_train.json, DIR/annotations/instances_val.json
    DIR/train/*.jpg, DIR/val/*.jpg

Images are landscape (S x 3S/4) or portrait (3S/4 x S; `landscape_fraction`
sets the mix, half and half by default) with a noisy
background and 2-8 filled shapes (`num_shapes`) of radius 6-22% of the
short side (`radius_range`) of 6 classes (circle, square, triangle,
ellipse, hexagon, star; `classes` picks a subset) whose COCO category ids
have gaps (`CATEGORY_IDS`). Later shapes are painted over earlier ones, so instances
overlap. Each instance's mask is exactly what is visible of it:

* unoccluded shapes are annotated with their polygon (curved shapes as
  polygons of 32 vertices); the pixels painted are the pycocotools
  rasterisation of that polygon, so image and mask agree exactly;
* occluded shapes are annotated as RLE of their visible region (compressed
  string counts, a few as uncompressed list counts), consistent with the
  painted pixels;
* about one image in four also has a crowd region (`iscrowd=1`,
  uncompressed RLE, like COCO's crowd annotations) of small blobs.

`bbox` is the tight box of the mask and `area` its pixel count. Everything is
a deterministic function of the seed (each image has its own generator seeded
from (seed, split, index)).
"""

import argparse
import json
import os
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
import pycocotools.mask as mask_util

CLASS_NAMES = ('circle', 'square', 'triangle', 'ellipse', 'hexagon', 'star')
CATEGORY_IDS = (1, 3, 4, 7, 8, 10)  # gaps on purpose
_SPLITS = {'train': 0, 'val': 1}
RADIUS_RANGE = (0.06, 0.22)  # of the short side
NUM_SHAPES = (2, 8)          # per image, inclusive


def _category_ids(classes: Sequence[str]) -> tuple:
  unknown = [c for c in classes if c not in CLASS_NAMES]
  if not classes or unknown or len(set(classes)) != len(classes):
    raise ValueError(f'classes must be distinct names out of {CLASS_NAMES}, '
                     f'got {tuple(classes)!r}')
  return tuple(CATEGORY_IDS[CLASS_NAMES.index(c)] for c in classes)


def _check_params(radius_range, num_shapes) -> None:
  lo, hi = (float(v) for v in radius_range)
  if not 0 < lo <= hi:
    raise ValueError(f'radius_range must be 0 < lo <= hi, got {radius_range}')
  nlo, nhi = (int(v) for v in num_shapes)
  if not 1 <= nlo <= nhi:
    raise ValueError(f'num_shapes must be 1 <= lo <= hi, got {num_shapes}')


def _shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float,
                   rng: np.random.Generator) -> np.ndarray:
  """(K, 2) float64 vertices of a shape."""
  if kind in ('circle', 'ellipse'):
    t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    ry = r if kind == 'circle' else r * rng.uniform(0.4, 0.7)
    pts = np.stack([r * np.cos(t), ry * np.sin(t)], 1)
  elif kind == 'star':
    t = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    pts = np.stack([rad * np.cos(t), rad * np.sin(t)], 1)
  else:
    k = {'square': 4, 'triangle': 3, 'hexagon': 6}[kind]
    t = np.linspace(0, 2 * np.pi, k, endpoint=False) + np.pi / 4
    pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
  c, s = np.cos(angle), np.sin(angle)
  pts = pts @ np.array([[c, s], [-s, c]])
  return pts + np.array([cx, cy])


def _rle_area_box(rle) -> tuple:
  area = int(mask_util.area(rle))
  x, y, w, h = (float(v) for v in mask_util.toBbox(rle))
  return area, [x, y, w, h]


def _uncompressed_rle(mask: np.ndarray) -> Dict:
  """COCO uncompressed RLE (column-major run lengths, starting with 0s)."""
  flat = np.asarray(mask, np.uint8).reshape(-1, order='F')
  change = np.flatnonzero(np.diff(flat)) + 1
  bounds = np.concatenate([[0], change, [flat.size]])
  runs = np.diff(bounds).tolist()
  if flat.size and flat[0] == 1:
    runs = [0] + runs
  return {'size': [int(mask.shape[0]), int(mask.shape[1])], 'counts': runs}


def make_image(rng: np.random.Generator, image_size: int, image_id: int,
               first_ann_id: int, landscape_fraction: float = 0.5,
               radius_range: Sequence[float] = RADIUS_RANGE,
               num_shapes: Sequence[int] = NUM_SHAPES,
               classes: Sequence[str] = CLASS_NAMES):
  """One image (BGR uint8) and its annotation dicts.

  radius_range: (lo, hi) of a shape's radius as a fraction of the image's
  short side; num_shapes: (lo, hi) shapes painted per image, inclusive;
  classes: the shape kinds drawn, a subset of CLASS_NAMES (their category
  ids stay those of CATEGORY_IDS).
  """
  cat_ids = _category_ids(classes)
  long_side = int(image_size)
  short_side = max(int(round(image_size * 0.75)), 1)
  if rng.random() < landscape_fraction:
    h, w = short_side, long_side
  else:
    h, w = long_side, short_side
  base = rng.integers(0, 256, 3)
  noise = rng.integers(-20, 21, (h, w, 3))
  image = np.clip(base[None, None] + noise, 0, 255).astype(np.uint8)

  num = int(rng.integers(int(num_shapes[0]), int(num_shapes[1]) + 1))
  owner = np.full((h, w), -1, np.int32)
  shapes = []
  for k in range(num):
    kind_idx = int(rng.integers(len(classes)))
    r = rng.uniform(float(radius_range[0]), float(radius_range[1])) * min(h, w)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    poly = _shape_polygon(classes[kind_idx], cx, cy, r,
                          rng.uniform(0, np.pi), rng)
    flat = poly.reshape(-1).tolist()
    rle = mask_util.merge(mask_util.frPyObjects([flat], h, w))
    m = mask_util.decode(rle).astype(bool)
    if not m.any():
      continue
    owner[m] = len(shapes)
    image[m] = rng.integers(0, 256, 3)
    shapes.append((kind_idx, flat, m))

  anns = []
  ann_id = first_ann_id
  for k, (kind_idx, flat, m) in enumerate(shapes):
    visible = owner == k
    if visible.sum() < 16:
      continue
    occluded = visible.sum() < m.sum()
    if occluded:
      if rng.random() < 0.3:
        seg = _uncompressed_rle(visible)
        rle = mask_util.frPyObjects(seg, h, w)
      else:
        rle = mask_util.encode(np.asfortranarray(visible.astype(np.uint8)))
        seg = {'size': [h, w], 'counts': rle['counts'].decode('ascii')}
    else:
      rle = mask_util.merge(mask_util.frPyObjects([flat], h, w))
      seg = [flat]
    area, bbox = _rle_area_box(rle)
    anns.append(dict(id=ann_id, image_id=image_id,
                     category_id=cat_ids[kind_idx], segmentation=seg,
                     area=float(area), bbox=bbox, iscrowd=0))
    ann_id += 1

  if rng.random() < 0.25:
    crowd = np.zeros((h, w), np.uint8)
    x0, y0 = rng.uniform(0, 0.6 * w), rng.uniform(0, 0.6 * h)
    for _ in range(int(rng.integers(4, 9))):
      c = (int(x0 + rng.uniform(0, 0.3 * w)), int(y0 + rng.uniform(0, 0.3 * h)))
      cv2.circle(crowd, c, int(rng.integers(2, 6)), 1, -1)
    color = rng.integers(0, 256, 3)
    image[crowd.astype(bool)] = color
    seg = _uncompressed_rle(crowd)
    area, bbox = _rle_area_box(mask_util.frPyObjects(seg, h, w))
    if area > 0:
      anns.append(dict(id=ann_id, image_id=image_id,
                       category_id=cat_ids[int(rng.integers(len(classes)))],
                       segmentation=seg, area=float(area), bbox=bbox,
                       iscrowd=1))
  return image, anns


def generate_split(out_dir: str, split: str, num_images: int, image_size: int,
                   seed: int = 0, image_format: str = 'jpg',
                   first_image_id: int = 1,
                   landscape_fraction: float = 0.5,
                   radius_range: Sequence[float] = RADIUS_RANGE,
                   num_shapes: Sequence[int] = NUM_SHAPES,
                   classes: Sequence[str] = CLASS_NAMES) -> str:
  """Writes one split; returns its annotation file path."""
  if image_format not in ('jpg', 'png'):
    raise ValueError(f'image_format must be jpg or png, got {image_format!r}')
  classes = tuple(classes)
  cat_ids = _category_ids(classes)
  _check_params(radius_range, num_shapes)
  img_dir = os.path.join(out_dir, split)
  ann_dir = os.path.join(out_dir, 'annotations')
  os.makedirs(img_dir, exist_ok=True)
  os.makedirs(ann_dir, exist_ok=True)
  images: List[Dict] = []
  annotations: List[Dict] = []
  ann_id = 1
  params = [cv2.IMWRITE_JPEG_QUALITY, 90] if image_format == 'jpg' else []
  for i in range(num_images):
    rng = np.random.default_rng([seed, _SPLITS.get(split, 2), i])
    image_id = first_image_id + i
    image, anns = make_image(rng, image_size, image_id, ann_id,
                             landscape_fraction, radius_range, num_shapes,
                             classes)
    ann_id += len(anns) + 1  # leave gaps in annotation ids too
    name = f'{split}_{image_id:06d}.{image_format}'
    ok, buf = cv2.imencode('.' + image_format, image, params)
    if not ok:
      raise RuntimeError(f'cannot encode {name}')
    with open(os.path.join(img_dir, name), 'wb') as f:
      f.write(buf.tobytes())
    images.append(dict(id=image_id, file_name=name, height=image.shape[0],
                       width=image.shape[1]))
    annotations.extend(anns)
  categories = [dict(id=c, name=n, supercategory='shape')
                for c, n in zip(cat_ids, classes)]
  path = os.path.join(ann_dir, f'instances_{split}.json')
  with open(path, 'w') as f:
    json.dump(dict(info=dict(description='maskrcnn_jax synthetic shapes',
                             seed=seed),
                   images=images, annotations=annotations,
                   categories=categories), f)
  return path


def generate(out_dir: str, num_train: int, num_val: int, image_size: int,
             seed: int = 0, image_format: str = 'jpg',
             landscape_fraction: float = 0.5,
             radius_range: Sequence[float] = RADIUS_RANGE,
             num_shapes: Sequence[int] = NUM_SHAPES,
             classes: Sequence[str] = CLASS_NAMES) -> Dict[str, str]:
  """Writes the train and val splits; returns {split: annotation file}.

  landscape_fraction: the share of landscape images (the others are
  portrait); 1.0 gives one image shape, hence one canvas to compile for.
  radius_range, num_shapes, classes: see `make_image` (the defaults are
  the dataset the tests and tools use).
  """
  out = {}
  for split, n, first in (('train', num_train, 1),
                          ('val', num_val, 1_000_001)):
    out[split] = generate_split(out_dir, split, n, image_size, seed,
                                image_format, first_image_id=first,
                                landscape_fraction=landscape_fraction,
                                radius_range=radius_range,
                                num_shapes=num_shapes, classes=classes)
  return out


def main(argv: Optional[List[str]] = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--out', required=True, help='output folder')
  p.add_argument('--num-train', type=int, default=64)
  p.add_argument('--num-val', type=int, default=16)
  p.add_argument('--image-size', type=int, default=640,
                 help='long side in pixels (short side = 3/4 of it)')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--format', default='jpg', choices=('jpg', 'png'))
  p.add_argument('--landscape-fraction', type=float, default=0.5,
                 help='share of landscape images, the rest portrait '
                      '(default 0.5)')
  p.add_argument('--radius-range', type=float, nargs=2,
                 default=RADIUS_RANGE, metavar=('LO', 'HI'),
                 help='shape radius as a fraction of the short side '
                      f'(default {RADIUS_RANGE[0]} {RADIUS_RANGE[1]})')
  p.add_argument('--num-shapes', type=int, nargs=2, default=NUM_SHAPES,
                 metavar=('LO', 'HI'),
                 help='shapes per image, inclusive '
                      f'(default {NUM_SHAPES[0]} {NUM_SHAPES[1]})')
  p.add_argument('--classes', nargs='+', default=CLASS_NAMES,
                 choices=CLASS_NAMES, help='shape kinds drawn (default all)')
  a = p.parse_args(argv)
  if a.num_train < 0 or a.num_val < 0 or a.image_size < 8:
    p.error('need --num-train/--num-val >= 0 and --image-size >= 8')
  if not 0.0 <= a.landscape_fraction <= 1.0:
    p.error(f'--landscape-fraction must be in [0, 1], got '
            f'{a.landscape_fraction}')
  try:
    _category_ids(a.classes)
    _check_params(a.radius_range, a.num_shapes)
  except ValueError as e:
    p.error(str(e))
  paths = generate(a.out, a.num_train, a.num_val, a.image_size, a.seed,
                   a.format, a.landscape_fraction, a.radius_range,
                   a.num_shapes, a.classes)
  for split, path in paths.items():
    print(f'{split}: {path}')


if __name__ == '__main__':
  main()
