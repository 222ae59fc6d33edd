"""Reader for COCO-format instance datasets (annotation JSON + image folder).

Follows MMDetection 3.3.0's `CocoDataset.parse_data_info` / `filter_data` and
`LoadAnnotations._process_masks`:

* boxes `[x, y, x + w, y + h]` (no -1), float32, absolute pixels;
* labels: contiguous 0-based indices of the category ids in ascending order,
  class names from the JSON's `categories` (`cat_ids[label]` maps back);
* an annotation is SKIPPED (counted, as MMDetection drops it) when it has a
  true `ignore` field, does not intersect the image, has `area <= 0`, or
  `w < 1` or `h < 1`;
* `iscrowd=1` annotations are kept apart as ignored boxes (never GT);
* polygons with fewer than 6 coordinates or an odd count are dropped from
  their instance; an instance left without a polygon is flagged ignore
  (MMDetection's `ignore_flag`) and joins the ignored boxes;
* train split (`train=True`, `filter_empty_gt=True, min_size=32`): images with
  no annotation at all of a known category and images whose shorter side is
  < 32 are dropped. As in MMDetection, an image whose annotations are all
  crowd or all skipped is KEPT (it has annotations in the file) and trains
  with zero GT instances (`stats()['images_without_gt']` counts them).
  Validation/test (`train=False`) keeps every image.

Malformed input is an error naming the annotation file and the annotation or
image id (`CocoFormatError`): a missing key, an id that is not an int64, a
bbox that is not 4 finite non-negative numbers, a non-finite area, an
unknown category id, an empty segmentation or empty polygon, polygon
coordinates beyond +-1e6, an RLE whose size is not the image's or whose
counts (compressed ones decoded) do not cover it exactly, a duplicate id, an
annotation of an image that is not listed, an empty dataset or a split left
empty by the train filter. `load_eval_annotations` (eval.py) runs the same
checks plus what pycocotools needs of every annotation, and
`check_eval_images` finds unreadable images before a model runs. Missing image files are an error at
load time (`check_files=True`); undecodable ones when read (`load_image`).
Skips are counted in `CocoDataset.skipped` and logged once per load.

Masks stay in their annotated form: polygons as float64 arrays (MMDetection
keeps float64, see mmdet #8531), RLE as a COCO-compressed dict
`{'size': [h, w], 'counts': bytes}`; they are decoded to bitmaps (pycocotools)
only by the transforms that need them.

Storage is flat (concatenated numpy arrays plus offsets), so a dataset the
size of COCO train2017 pickles quickly into data-loader worker processes;
`CocoDataset.records[i]` builds the `CocoRecord` of image i on access.
"""

import collections
import dataclasses
import json
import logging
import math
import os
from typing import (Any, Callable, Dict, Iterator, List, Mapping, Optional,
                    Sequence, Tuple, Union)

import numpy as np
import pycocotools.mask as mask_util

from maskrcnn_jax import preprocess

log = logging.getLogger(__name__)

# A polygon instance: list of flat float64 [x0, y0, x1, y1, ...] arrays.
Polygons = List[np.ndarray]
# An RLE instance: {'size': [h, w], 'counts': bytes} (COCO compressed).
Rle = Dict[str, Any]
Segmentation = Union[Polygons, Rle]

MIN_SIZE = 32
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Polygon coordinates beyond this are an error (pycocotools rasterises the
# whole outline: huge values exhaust memory).
MAX_POLYGON_COORD = 1e6  # MMDetection filter_cfg min_size of the COCO train split.

# Counter names of `CocoDataset.skipped`.
SKIP_REASONS = (
    'ignore_flag',          # annotation with a true `ignore` field
    'no_overlap',           # box does not intersect the image
    'zero_area',            # area <= 0
    'too_thin',             # w < 1 or h < 1
    'invalid_polygon',      # instance without a valid polygon -> ignored box
    'dropped_polygons',     # polygons < 6 coords / odd length removed
    'images_without_annotations',  # train filter
    'images_too_small',            # train filter (min side < 32)
)


class CocoFormatError(ValueError):
  """A malformed annotation file; the message names the file and the id."""


@dataclasses.dataclass(frozen=True, eq=False)
class CocoRecord:
  """One image and its instances.

  Attributes:
    index: position in `CocoDataset.records`.
    image_id: COCO image id.
    file_name: `file_name` of the image entry.
    image_path: image_dir joined with file_name ('' when not on disk).
    height, width: image size from the JSON (checked against the decoded
      image by the transforms).
    boxes: (N, 4) float32 XYXY of the GT instances, annotation order.
    labels: (N,) int32 contiguous labels.
    ann_ids: (N,) int64 annotation ids.
    masks: N segmentations: a list of float64 polygons or an RLE dict.
    ignored_boxes: (M, 4) float32: crowd and invalid-polygon instances.
    ignored_labels: (M,) int32.
    ignored_ann_ids: (M,) int64.
  """
  index: int
  image_id: int
  file_name: str
  image_path: str
  height: int
  width: int
  boxes: np.ndarray
  labels: np.ndarray
  ann_ids: np.ndarray
  masks: Tuple[Segmentation, ...]
  ignored_boxes: np.ndarray
  ignored_labels: np.ndarray
  ignored_ann_ids: np.ndarray

  @property
  def num_instances(self) -> int:
    return int(self.boxes.shape[0])

  @property
  def is_portrait(self) -> bool:
    """MMDetection AspectRatioBatchSampler bucket: width < height."""
    return self.width < self.height


# ---------------------------------------------------------------------------
# Flat storage shared by the in-memory dataset and the TFDS examples.
# ---------------------------------------------------------------------------

def pack_masks(masks: Sequence[Segmentation]) -> Dict[str, np.ndarray]:
  """Flattens segmentations into arrays (the TFDS feature layout).

  Returns:
    inst_num_polys: (N,) int32, polygons per instance; 0 means RLE.
    poly_lengths: (P,) int32, coordinates per polygon.
    poly_coords: (C,) float64, all polygon coordinates.
    rle_counts: (R,) object array of compressed RLE bytes, one per RLE
      instance in instance order.
  """
  num_polys, lengths, coords, rles = [], [], [], []
  for seg in masks:
    if isinstance(seg, dict):
      num_polys.append(0)
      rles.append(seg['counts'])
    else:
      num_polys.append(len(seg))
      for p in seg:
        lengths.append(len(p))
        coords.append(np.asarray(p, np.float64))
  rle_arr = np.empty((len(rles),), object)
  rle_arr[:] = rles
  return dict(
      inst_num_polys=np.asarray(num_polys, np.int32),
      poly_lengths=np.asarray(lengths, np.int32),
      poly_coords=(np.concatenate(coords) if coords
                   else np.zeros((0,), np.float64)),
      rle_counts=rle_arr)


def unpack_masks(inst_num_polys: np.ndarray, poly_lengths: np.ndarray,
                 poly_coords: np.ndarray, rle_counts: Sequence[bytes],
                 height: int, width: int) -> Tuple[Segmentation, ...]:
  """Inverse of `pack_masks`."""
  out = []
  p = c = r = 0
  for n in np.asarray(inst_num_polys).tolist():
    if n == 0:
      counts = rle_counts[r]
      if isinstance(counts, str):
        counts = counts.encode('ascii')
      out.append({'size': [int(height), int(width)], 'counts': bytes(counts)})
      r += 1
    else:
      polys = []
      for length in np.asarray(poly_lengths[p:p + n]).tolist():
        polys.append(np.asarray(poly_coords[c:c + length], np.float64))
        c += length
      p += n
      out.append(polys)
  return tuple(out)


class _Columns:
  """Growable per-image lists that become the flat arrays."""

  def __init__(self):
    self.image_ids, self.file_names, self.heights, self.widths = [], [], [], []
    self.inst_counts, self.ign_counts = [], []
    self.boxes, self.labels, self.ann_ids, self.masks = [], [], [], []
    self.ign_boxes, self.ign_labels, self.ign_ann_ids = [], [], []


class CocoDataset:
  """A parsed COCO instance dataset.

  Attributes:
    ann_file: the annotation file it was read from.
    image_dir: folder the image file names are relative to.
    class_names: tuple of names, index = label.
    cat_ids: tuple of COCO category ids, index = label.
    records: sequence of `CocoRecord` (built on access).
    skipped: dict reason -> count (see `SKIP_REASONS`).
    train: whether the train filter was applied.
  """

  def __init__(self, *, ann_file: str, image_dir: str,
               class_names: Sequence[str], cat_ids: Sequence[int],
               columns: _Columns, skipped: Mapping[str, int], train: bool):
    self.ann_file = ann_file
    self.image_dir = image_dir
    self.class_names = tuple(class_names)
    self.cat_ids = tuple(int(c) for c in cat_ids)
    self.skipped = dict(skipped)
    self.train = train
    c = columns
    self.image_ids = np.asarray(c.image_ids, np.int64)
    self.file_names = list(c.file_names)
    self.heights = np.asarray(c.heights, np.int32)
    self.widths = np.asarray(c.widths, np.int32)
    self._inst_off = np.concatenate(
        [[0], np.cumsum(c.inst_counts, dtype=np.int64)]).astype(np.int64)
    self._ign_off = np.concatenate(
        [[0], np.cumsum(c.ign_counts, dtype=np.int64)]).astype(np.int64)
    self._boxes = np.asarray(c.boxes, np.float32).reshape(-1, 4)
    self._labels = np.asarray(c.labels, np.int32)
    self._ann_ids = np.asarray(c.ann_ids, np.int64)
    self._ign_boxes = np.asarray(c.ign_boxes, np.float32).reshape(-1, 4)
    self._ign_labels = np.asarray(c.ign_labels, np.int32)
    self._ign_ann_ids = np.asarray(c.ign_ann_ids, np.int64)
    packed = pack_masks(c.masks)
    self._inst_num_polys = packed['inst_num_polys']
    self._poly_lengths = packed['poly_lengths']
    self._poly_coords = packed['poly_coords']
    self._rle_counts = list(packed['rle_counts'])
    # Offsets of each instance into the polygon / coordinate / RLE tables.
    self._inst_poly_off = np.concatenate(
        [[0], np.cumsum(self._inst_num_polys, dtype=np.int64)])
    self._poly_coord_off = np.concatenate(
        [[0], np.cumsum(self._poly_lengths, dtype=np.int64)])
    self._inst_rle_idx = np.cumsum(self._inst_num_polys == 0) - 1
    self.records = _RecordView(self)

  def __len__(self) -> int:
    return int(self.image_ids.shape[0])

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def is_portrait(self) -> np.ndarray:
    """(n,) bool, MMDetection's aspect-ratio bucket (width < height)."""
    return self.widths < self.heights

  def num_instances(self) -> np.ndarray:
    """(n,) int: GT instances per image."""
    return np.diff(self._inst_off)

  def num_ignored(self) -> np.ndarray:
    """(n,) int: ignored (crowd / invalid) boxes per image."""
    return np.diff(self._ign_off)

  def max_vertices(self) -> np.ndarray:
    """(n,) int: the largest polygon vertex count of an instance, per image."""
    per_inst = np.add.reduceat(
        np.concatenate([self._poly_lengths // 2, [0]]),
        self._inst_poly_off[:-1]) if len(self._inst_num_polys) else (
            np.zeros((0,), np.int64))
    per_inst = np.where(self._inst_num_polys > 0, per_inst, 0)
    out = np.zeros((len(self),), np.int64)
    counts = self.num_instances()
    owner = np.repeat(np.arange(len(self)), counts)
    np.maximum.at(out, owner, per_inst)
    return out

  def num_rle(self) -> np.ndarray:
    """(n,) int: GT instances with an RLE (not polygon) mask, per image."""
    owner = np.repeat(np.arange(len(self)), self.num_instances())
    return np.bincount(owner, weights=(self._inst_num_polys == 0),
                       minlength=len(self)).astype(np.int64)

  def stats(self) -> Dict[str, int]:
    """Totals: images, instances, ignored boxes, RLE instances, empty images."""
    n_inst = self.num_instances()
    return dict(images=len(self), instances=int(n_inst.sum()),
                ignored=int(self.num_ignored().sum()),
                rle_instances=int((self._inst_num_polys == 0).sum()),
                images_without_gt=int((n_inst == 0).sum()),
                max_instances_per_image=int(n_inst.max(initial=0)))

  def record(self, i: int) -> CocoRecord:
    n = len(self)
    if not -n <= i < n:
      raise IndexError(f'record {i} out of range for {n} images')
    i %= n
    a, b = int(self._inst_off[i]), int(self._inst_off[i + 1])
    ia, ib = int(self._ign_off[i]), int(self._ign_off[i + 1])
    h, w = int(self.heights[i]), int(self.widths[i])
    masks = []
    for k in range(a, b):
      npoly = int(self._inst_num_polys[k])
      if npoly == 0:
        masks.append({'size': [h, w],
                      'counts': self._rle_counts[int(self._inst_rle_idx[k])]})
      else:
        p0 = int(self._inst_poly_off[k])
        polys = []
        for p in range(p0, p0 + npoly):
          c0, c1 = int(self._poly_coord_off[p]), int(self._poly_coord_off[p + 1])
          polys.append(self._poly_coords[c0:c1].copy())
        masks.append(polys)
    name = self.file_names[i]
    return CocoRecord(
        index=i, image_id=int(self.image_ids[i]), file_name=name,
        image_path=os.path.join(self.image_dir, name) if self.image_dir else '',
        height=h, width=w,
        boxes=self._boxes[a:b].copy(), labels=self._labels[a:b].copy(),
        ann_ids=self._ann_ids[a:b].copy(), masks=tuple(masks),
        ignored_boxes=self._ign_boxes[ia:ib].copy(),
        ignored_labels=self._ign_labels[ia:ib].copy(),
        ignored_ann_ids=self._ign_ann_ids[ia:ib].copy())

  def __repr__(self) -> str:
    return (f'CocoDataset({self.ann_file!r}, images={len(self)}, '
            f'classes={self.num_classes}, train={self.train})')


class _RecordView(collections.abc.Sequence):
  """`dataset.records`: a read-only sequence of `CocoRecord`."""

  def __init__(self, dataset: CocoDataset):
    self._ds = dataset

  def __len__(self) -> int:
    return len(self._ds)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self._ds.record(j) for j in range(*i.indices(len(self)))]
    return self._ds.record(int(i))

  def __iter__(self) -> Iterator[CocoRecord]:
    for i in range(len(self)):
      yield self._ds.record(i)


# ---------------------------------------------------------------------------
# Parsing.
# ---------------------------------------------------------------------------

def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v) -> bool:
  """An int (not a bool) that fits int64 (ids are stored as int64)."""
  return (isinstance(v, int) and not isinstance(v, bool)
          and -2 ** 63 <= v < 2 ** 63)


def rle_string_counts(counts: Union[str, bytes]) -> List[int]:
  """Run lengths of a COCO compressed RLE string (pycocotools rleFrString).

  Raises:
    ValueError: a character outside the alphabet or a string cut short.
  """
  s = counts.decode('ascii') if isinstance(counts, bytes) else counts
  out, p, n = [], 0, len(s)
  while p < n:
    x, k, more = 0, 0, True
    while more:
      if p >= n:
        raise ValueError('RLE string ends inside a run length')
      c = ord(s[p]) - 48
      if not 0 <= c < 64:
        raise ValueError(f'RLE string has an invalid character {s[p]!r}')
      x |= (c & 0x1f) << (5 * k)
      more = bool(c & 0x20)
      p += 1
      k += 1
      if not more and c & 0x10:
        x |= -1 << (5 * k)
    if len(out) > 2:
      x += out[-2]
    out.append(x)
  return out


def _check_rle_counts(cnt, *, where: str, height: int, width: int):
  """Validates the counts of an RLE of a (height, width) image."""
  if isinstance(cnt, list):
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
               for v in cnt):
      raise CocoFormatError(f'{where}: RLE counts must be non-negative '
                            'integers')
    total = sum(cnt)
  elif isinstance(cnt, (str, bytes)):
    if not cnt:
      raise CocoFormatError(f'{where}: empty RLE counts')
    try:
      runs = rle_string_counts(cnt)
    except (ValueError, UnicodeDecodeError) as e:
      raise CocoFormatError(f'{where}: invalid compressed RLE counts '
                            f'({e})') from None
    if any(v < 0 for v in runs):
      raise CocoFormatError(f'{where}: compressed RLE has a negative run '
                            'length')
    total = sum(runs)
  else:
    raise CocoFormatError(f'{where}: RLE counts must be a list or a string, '
                          f'got {type(cnt).__name__}')
  if total != height * width:
    raise CocoFormatError(f'{where}: RLE counts sum to {total}, not '
                          f'height*width={height * width}')


def _check_rle_size(seg, *, where: str, height: int, width: int):
  if 'counts' not in seg or 'size' not in seg:
    raise CocoFormatError(f'{where}: RLE segmentation needs "counts" and '
                          f'"size", got keys {sorted(map(str, seg))}')
  size = seg['size']
  if (not isinstance(size, (list, tuple)) or len(size) != 2
      or not all(isinstance(v, int) and not isinstance(v, bool)
                 for v in size)
      or [size[0], size[1]] != [height, width]):
    raise CocoFormatError(f'{where}: RLE size {size!r} is not the image '
                          f'size [{height}, {width}]')


def _check_crowd_segmentation(seg, *, where: str, height: int, width: int):
  """A crowd instance's segmentation (used by COCOeval): RLE or polygons."""
  if isinstance(seg, dict):
    _check_rle_size(seg, where=where, height=height, width=width)
    _check_rle_counts(seg['counts'], where=where, height=height, width=width)
  elif isinstance(seg, list):
    for j, poly in enumerate(seg):
      if (not isinstance(poly, list) or not all(_is_number(v) for v in poly)
          or len(poly) < 6 or len(poly) % 2
          or not all(math.isfinite(v) and abs(v) <= MAX_POLYGON_COORD
                     for v in poly)):
        raise CocoFormatError(f'{where}: crowd polygon {j} must be a flat '
                              'list of >= 6 finite numbers (even count) '
                              f'within +-{MAX_POLYGON_COORD:g}')
  else:
    raise CocoFormatError(f'{where}: segmentation must be a list of polygons '
                          f'or an RLE dict, got {type(seg).__name__}')


def _parse_segmentation(seg, *, where: str, height: int, width: int,
                        counts: Dict[str, int]) -> Optional[Segmentation]:
  """Validates one non-crowd segmentation; None = no valid polygon."""
  if isinstance(seg, dict):
    _check_rle_size(seg, where=where, height=height, width=width)
    cnt = seg['counts']
    _check_rle_counts(cnt, where=where, height=height, width=width)
    if isinstance(cnt, list):
      rle = mask_util.frPyObjects({'size': [height, width], 'counts': cnt},
                                  height, width)
      return {'size': [height, width], 'counts': bytes(rle['counts'])}
    return {'size': [height, width],
            'counts': cnt.encode('ascii') if isinstance(cnt, str) else cnt}
  if not isinstance(seg, list):
    raise CocoFormatError(f'{where}: segmentation must be a list of polygons '
                          f'or an RLE dict, got {type(seg).__name__}')
  if not seg:
    raise CocoFormatError(f'{where}: empty segmentation (no polygon)')
  polys = []
  for j, poly in enumerate(seg):
    if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
      raise CocoFormatError(f'{where}: polygon {j} must be a flat list of '
                            'numbers')
    if not poly:
      raise CocoFormatError(f'{where}: polygon {j} is empty')
    arr = np.asarray(poly, np.float64)
    if not np.all(np.isfinite(arr)):
      raise CocoFormatError(f'{where}: polygon {j} has non-finite '
                            'coordinates')
    if np.abs(arr).max() > MAX_POLYGON_COORD:
      raise CocoFormatError(f'{where}: polygon {j} has coordinates beyond '
                            f'+-{MAX_POLYGON_COORD:g}')
    # MMDetection LoadAnnotations._process_masks: keep even-length polygons
    # of at least 3 points.
    if len(arr) % 2 == 0 and len(arr) >= 6:
      polys.append(arr)
    else:
      counts['dropped_polygons'] += 1
  return polys or None


def parse_coco(data: Mapping[str, Any], *, ann_file: str, image_dir: str,
               train: bool,
               file_exists: Optional[Callable[[str], bool]] = None,
               min_size: int = MIN_SIZE,
               log_skips: bool = True) -> CocoDataset:
  """Builds a `CocoDataset` from an already loaded annotation dict.

  Args:
    data: the parsed JSON.
    ann_file: its name, for messages.
    image_dir: folder of the images (joined with `file_name`).
    train: apply the train filter (drop images without annotations or with a
      side < min_size); False keeps all images.
    file_exists: called with each kept image's file name (relative); a False
      answer is an error. None skips the check.
    min_size: train filter minimum image side.
    log_skips: log the skipped annotations (MMDetection rules) once.

  Raises:
    CocoFormatError: malformed content, missing image file, empty dataset.
  """
  if not isinstance(data, Mapping):
    raise CocoFormatError(f'{ann_file}: top level must be a JSON object')
  for key in ('images', 'annotations', 'categories'):
    if key not in data:
      raise CocoFormatError(f'{ann_file}: missing top-level key "{key}"')
    if not isinstance(data[key], list):
      raise CocoFormatError(f'{ann_file}: "{key}" must be a list')

  # Categories -> contiguous labels in ascending id order.
  cats = {}
  for j, cat in enumerate(data['categories']):
    if not isinstance(cat, Mapping) or 'id' not in cat or 'name' not in cat:
      raise CocoFormatError(f'{ann_file}: category entry {j} needs "id" and '
                            f'"name": {cat!r}'[:300])
    cid = cat['id']
    if not _is_int(cid):
      raise CocoFormatError(f'{ann_file}: category id {cid!r} is not an int')
    if cid in cats:
      raise CocoFormatError(f'{ann_file}: duplicate category id {cid}')
    cats[cid] = str(cat['name'])
  if not cats:
    raise CocoFormatError(f'{ann_file}: no categories')
  cat_ids = sorted(cats)
  cat2label = {c: i for i, c in enumerate(cat_ids)}
  class_names = [cats[c] for c in cat_ids]

  # Images.
  images = {}
  order = []
  for j, img in enumerate(data['images']):
    if not isinstance(img, Mapping):
      raise CocoFormatError(f'{ann_file}: image entry {j} is not an object')
    for key in ('id', 'file_name', 'height', 'width'):
      if key not in img:
        raise CocoFormatError(
            f'{ann_file}: image entry {j} (id {img.get("id")!r}) is missing '
            f'key "{key}"')
    iid = img['id']
    if not _is_int(iid):
      raise CocoFormatError(f'{ann_file}: image id {iid!r} is not an int')
    if iid in images:
      raise CocoFormatError(f'{ann_file}: duplicate image id {iid}')
    h, w = img['height'], img['width']
    if not (_is_int(h) and _is_int(w) and h > 0 and w > 0):
      raise CocoFormatError(f'{ann_file}: image id {iid} '
                            f'({img["file_name"]}) has invalid size '
                            f'height={h!r} width={w!r}')
    if not isinstance(img['file_name'], str) or not img['file_name']:
      raise CocoFormatError(f'{ann_file}: image id {iid} has an invalid '
                            f'file_name {img["file_name"]!r}')
    images[iid] = img
    order.append(iid)
  if not images:
    raise CocoFormatError(f'{ann_file}: the dataset has no images')

  # Annotations, in file order per image (MMDetection's instance order).
  per_image: Dict[int, List[Mapping[str, Any]]] = {i: [] for i in order}
  seen_ann = set()
  for j, ann in enumerate(data['annotations']):
    if not isinstance(ann, Mapping):
      raise CocoFormatError(f'{ann_file}: annotation entry {j} is not an '
                            'object')
    if 'id' not in ann:
      raise CocoFormatError(f'{ann_file}: annotation entry {j} is missing key '
                            '"id"')
    aid = ann['id']
    if not _is_int(aid):
      raise CocoFormatError(f'{ann_file}: annotation entry {j} has id '
                            f'{aid!r}, not an int'[:300])
    if aid in seen_ann:
      raise CocoFormatError(f'{ann_file}: duplicate annotation id {aid}')
    seen_ann.add(aid)
    for key in ('image_id', 'bbox', 'category_id', 'area'):
      if key not in ann:
        raise CocoFormatError(f'{ann_file}: annotation id {aid} is missing '
                              f'key "{key}"')
    if not _is_int(ann['image_id']) or ann['image_id'] not in per_image:
      raise CocoFormatError(f'{ann_file}: annotation id {aid} refers to '
                            f'image_id {ann["image_id"]!r}, which is not in '
                            '"images"')
    per_image[ann['image_id']].append(ann)

  counts = collections.Counter({k: 0 for k in SKIP_REASONS})
  cols = _Columns()
  for iid in order:
    img = images[iid]
    h, w = img['height'], img['width']
    anns = per_image[iid]
    boxes, labels, ann_ids, masks = [], [], [], []
    ign_boxes, ign_labels, ign_ids = [], [], []
    for ann in anns:
      aid = ann['id']
      where = (f'{ann_file}: annotation id {aid} (image id {iid}, '
               f'{img["file_name"]})')
      bbox = ann['bbox']
      if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
          or not all(_is_number(v) for v in bbox)):
        raise CocoFormatError(f'{where}: bbox must be 4 numbers [x, y, w, h], '
                              f'got {bbox!r}')
      if not all(math.isfinite(v) for v in bbox):
        raise CocoFormatError(f'{where}: bbox has non-finite values {bbox}')
      if min(bbox) < 0:
        raise CocoFormatError(f'{where}: bbox has negative values {bbox}')
      if max(bbox[0] + bbox[2], bbox[1] + bbox[3]) > _FLOAT32_MAX:
        raise CocoFormatError(f'{where}: bbox {bbox} exceeds the float32 '
                              'range')
      area = ann['area']
      if not _is_number(area) or not math.isfinite(area):
        raise CocoFormatError(f'{where}: area must be a finite number, got '
                              f'{area!r}')
      cid = ann['category_id']
      if not _is_int(cid) or cid not in cat2label:
        raise CocoFormatError(f'{where}: unknown category_id {cid!r} (not in '
                              '"categories")')
      # MMDetection CocoDataset.parse_data_info skip rules.
      if ann.get('ignore', False):
        counts['ignore_flag'] += 1
        continue
      x1, y1, bw, bh = bbox
      inter_w = max(0, min(x1 + bw, w) - max(x1, 0))
      inter_h = max(0, min(y1 + bh, h) - max(y1, 0))
      if inter_w * inter_h == 0:
        counts['no_overlap'] += 1
        continue
      if area <= 0:
        counts['zero_area'] += 1
        continue
      if bw < 1 or bh < 1:
        counts['too_thin'] += 1
        continue
      box = [x1, y1, x1 + bw, y1 + bh]
      label = cat2label[cid]
      if ann.get('iscrowd', 0):
        if 'segmentation' in ann:
          _check_crowd_segmentation(ann['segmentation'], where=where,
                                    height=h, width=w)
        ign_boxes.append(box)
        ign_labels.append(label)
        ign_ids.append(aid)
        continue
      if 'segmentation' not in ann:
        raise CocoFormatError(f'{where}: missing key "segmentation"')
      seg = _parse_segmentation(ann['segmentation'], where=where, height=h,
                                width=w, counts=counts)
      if seg is None:
        counts['invalid_polygon'] += 1
        ign_boxes.append(box)
        ign_labels.append(label)
        ign_ids.append(aid)
        continue
      boxes.append(box)
      labels.append(label)
      ann_ids.append(aid)
      masks.append(seg)
    # Train filter (MMDetection filter_data, after every annotation has been
    # validated): images with any annotation (of a known category) are kept,
    # whatever their flags.
    if train:
      if not anns:
        counts['images_without_annotations'] += 1
        continue
      if min(w, h) < min_size:
        counts['images_too_small'] += 1
        continue
    if file_exists is not None and not file_exists(img['file_name']):
      raise FileNotFoundError(
          f'{ann_file}: image file of image id {iid} not found: '
          f'{os.path.join(image_dir, img["file_name"])}')
    cols.image_ids.append(iid)
    cols.file_names.append(img['file_name'])
    cols.heights.append(h)
    cols.widths.append(w)
    cols.inst_counts.append(len(boxes))
    cols.ign_counts.append(len(ign_boxes))
    cols.boxes.extend(boxes)
    cols.labels.extend(labels)
    cols.ann_ids.extend(ann_ids)
    cols.masks.extend(masks)
    cols.ign_boxes.extend(ign_boxes)
    cols.ign_labels.extend(ign_labels)
    cols.ign_ann_ids.extend(ign_ids)

  if not cols.image_ids:
    raise CocoFormatError(
        f'{ann_file}: no image left after the train filter '
        f'({counts["images_without_annotations"]} without annotations, '
        f'{counts["images_too_small"]} with a side < {min_size})')
  skipped = {k: int(v) for k, v in counts.items()}
  nonzero = {k: v for k, v in skipped.items() if v}
  if nonzero and log_skips:
    log.warning('%s: %d images kept; skipped (MMDetection rules): %s',
                ann_file, len(cols.image_ids),
                ', '.join(f'{k}={v}' for k, v in nonzero.items()))
  return CocoDataset(ann_file=ann_file, image_dir=image_dir,
                     class_names=class_names, cat_ids=cat_ids, columns=cols,
                     skipped=skipped, train=train)


def load_coco(ann_file: str, image_dir: str, *, train: bool,
              check_files: bool = True,
              min_size: int = MIN_SIZE) -> CocoDataset:
  """Reads a COCO instance annotation file and its image folder.

  Args:
    ann_file: path of the annotation JSON.
    image_dir: folder that `file_name`s are relative to.
    train: True applies MMDetection's train filter (`filter_empty_gt=True,
      min_size=32`); False (val/test) keeps every image.
    check_files: error at load time if a kept image file is missing.
    min_size: train filter minimum image side.

  Returns:
    The `CocoDataset`.

  Raises:
    FileNotFoundError: the annotation file or an image file is missing.
    CocoFormatError: malformed JSON or annotation (message names the file
      and the annotation / image id), or an empty dataset.
  """
  data = read_annotation_json(ann_file)
  exists = None
  if check_files:
    if not os.path.isdir(image_dir):
      raise FileNotFoundError(f'image folder not found: {image_dir} (for '
                              f'{ann_file})')
    exists = lambda name: os.path.isfile(os.path.join(image_dir, name))
  return parse_coco(data, ann_file=ann_file, image_dir=image_dir, train=train,
                    file_exists=exists, min_size=min_size)


def read_annotation_json(ann_file: str) -> Any:
  """The parsed JSON of an annotation file (not validated).

  Raises:
    FileNotFoundError: no such file.
    CocoFormatError: not JSON (truncated, binary), naming the file.
  """
  if not os.path.isfile(ann_file):
    raise FileNotFoundError(f'annotation file not found: {ann_file}')
  try:
    with open(ann_file, 'rb') as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CocoFormatError(f'{ann_file}: not valid JSON ({e})') from None
  except RecursionError:
    raise CocoFormatError(f'{ann_file}: not valid JSON (nested too '
                          'deeply)') from None


def load_eval_annotations(ann_file: str) -> Dict[str, Any]:
  """An annotation file for COCOeval, validated as the training data are.

  Runs `parse_coco` (val rules: every image kept) on the file, so duplicate
  ids, annotations of unlisted images, bad boxes, unknown categories, bad
  RLE and polygons are errors naming the file and the id; and checks what
  pycocotools needs beyond that (`iscrowd` 0/1, default 0).

  Returns:
    The JSON dict, ready for `pycocotools.coco.COCO` (`dataset` +
    `createIndex()`).

  Raises:
    FileNotFoundError, CocoFormatError.
  """
  data = read_annotation_json(ann_file)
  parse_coco(data, ann_file=ann_file, image_dir='', train=False,
             log_skips=False)
  images = {img['id']: img for img in data['images']}
  with_seg = [a for a in data['annotations'] if 'segmentation' in a]
  for ann in data['annotations']:
    where = f'{ann_file}: annotation id {ann["id"]}'
    crowd = ann.setdefault('iscrowd', 0)
    if crowd not in (0, 1) or not isinstance(crowd, (int, bool)):
      raise CocoFormatError(f'{where} has iscrowd={crowd!r}; expected 0 or '
                            '1'[:300])
    if 'segmentation' not in ann:
      if with_seg:
        raise CocoFormatError(f'{where} has no "segmentation" (other '
                              'annotations have one)')
      continue
    # COCOeval converts EVERY annotation's mask (also those the training
    # rules skip): pycocotools must be able to read it.
    img = images[ann['image_id']]
    h, w = img['height'], img['width']
    seg = ann['segmentation']
    if isinstance(seg, dict):
      _check_rle_size(seg, where=where, height=h, width=w)
      _check_rle_counts(seg['counts'], where=where, height=h, width=w)
    elif isinstance(seg, list) and seg:
      for j, poly in enumerate(seg):
        if (not isinstance(poly, list) or not all(_is_number(v) for v in poly)
            or not all(math.isfinite(v) and abs(v) <= MAX_POLYGON_COORD
                       for v in poly)):
          raise CocoFormatError(f'{where}: polygon {j} must be a flat list of '
                                'finite numbers within '
                                f'+-{MAX_POLYGON_COORD:g}')
        if len(poly) < (5 if j == 0 else 4):
          raise CocoFormatError(
              f'{where}: polygon {j} has {len(poly)} coordinates, too few '
              'for pycocotools (a first polygon of 4 is read as a box)')
    else:
      raise CocoFormatError(f'{where}: segmentation must be a non-empty list '
                            f'of polygons or an RLE dict, got {seg!r}'[:300])
  return data


def _decodable(path: str) -> Optional[str]:
  """None if `path` decodes (at 1/8 scale: fast), else the reason."""
  import cv2  # pylint: disable=g-import-not-at-top
  try:
    data = np.fromfile(path, np.uint8)
  except OSError as e:
    return f'cannot read ({e.strerror})'
  if not data.size:
    return 'empty file'
  if cv2.imdecode(data, cv2.IMREAD_REDUCED_GRAYSCALE_8) is None:
    return 'cannot decode (corrupt or unsupported format)'
  return None


def find_unreadable_images(paths: Sequence[str],
                           threads: int = 4) -> List[Tuple[str, str]]:
  """(path, reason) of the images that cannot be decoded, in input order.

  Decodes at reduced size in a thread pool (cv2 releases the GIL), about a
  millisecond per COCO image.
  """
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    reasons = list(pool.map(_decodable, paths))
  return [(p, r) for p, r in zip(paths, reasons) if r is not None]


def check_eval_images(coco_gt, image_dir: str, img_ids: Sequence[int],
                      skip_bad: bool = False,
                      log: Callable[[str], Any] = print
                      ) -> Tuple[List[int], List[Tuple[int, str, str]]]:
  """Finds missing and undecodable images before a model runs on them.

  Args:
    coco_gt: pycocotools COCO of the annotation file.
    image_dir: the image folder.
    img_ids: the image ids to evaluate.
    skip_bad: drop the bad images (the AP is then over fewer images) instead
      of stopping.
    log: where the warning goes.

  Returns:
    (image ids to evaluate, [(image id, path, reason)] of those dropped).

  Raises:
    CocoFormatError: some images are missing or undecodable and not
      skip_bad; the message names them.
  """
  img_ids = list(img_ids)
  paths = [os.path.join(image_dir, coco_gt.imgs[i]['file_name'])
           for i in img_ids]
  missing = [(p, 'missing') for p in paths if not os.path.isfile(p)]
  gone = {p for p, _ in missing}
  bad = dict(missing + find_unreadable_images(
      [p for p in paths if p not in gone]))
  if not bad:
    return img_ids, []
  dropped = [(i, p, bad[p]) for i, p in zip(img_ids, paths) if p in bad]
  shown = '; '.join(f'{p} (image id {i}): {r}' for i, p, r in dropped[:5])
  more = f'; +{len(dropped) - 5} more' if len(dropped) > 5 else ''
  if not skip_bad:
    raise CocoFormatError(
        f'{len(dropped)} of {len(img_ids)} images of {image_dir} cannot be '
        f'read: {shown}{more} (pass --skip-bad-images to evaluate without '
        'them)')
  kept = [i for i, p in zip(img_ids, paths) if p not in bad]
  if not kept:
    raise CocoFormatError(f'none of the {len(img_ids)} images of '
                          f'{image_dir} can be read: {shown}{more}')
  log(f'warning: skipping {len(dropped)} unreadable images, the metrics are '
      f'over {len(kept)} of {len(img_ids)} images: {shown}{more}')
  return kept, dropped


def note_skipped_images(metrics: Dict[str, Any],
                        dropped: Sequence[Tuple[int, str, str]],
                        out_dir: Optional[str],
                        log: Callable[[str], Any] = print) -> Dict[str, Any]:
  """Adds `num_skipped_images` and `skipped_images` to the metrics (and to
  out_dir/metrics.json)."""
  metrics = dict(metrics, num_skipped_images=len(dropped),
                 skipped_images=[dict(image_id=int(i), file=p, reason=r)
                                 for i, p, r in dropped])
  if out_dir:
    path = os.path.join(out_dir, 'metrics.json')
    stored = {}
    if os.path.isfile(path):
      with open(path) as f:
        stored = json.load(f)
    stored.update(num_skipped_images=metrics['num_skipped_images'],
                  skipped_images=metrics['skipped_images'])
    with open(path, 'w') as f:
      json.dump(stored, f, indent=1)
  log(f'note: {len(dropped)} images were skipped (unreadable); see '
      '"skipped_images"')
  return metrics


def decode_image(data: bytes, *, name: str, image_id: int,
                 expect_hw: Optional[Tuple[int, int]] = None) -> np.ndarray:
  """Decodes encoded image bytes to uint8 BGR as MMDetection does (cv2).

  Raises:
    ValueError: undecodable bytes or a size other than `expect_hw`; the
      message names the file and the image id.
  """
  import cv2  # pylint: disable=g-import-not-at-top
  buf = np.frombuffer(data, np.uint8)
  image = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
  if image is None:
    raise ValueError(f'cannot decode image {name} (image id {image_id}): '
                     'corrupt or unsupported file')
  return _check_hw(image, name, image_id, expect_hw)


def load_image(record: CocoRecord) -> np.ndarray:
  """Reads a record's image file as uint8 BGR (H, W, 3), checking its size.

  Raises:
    FileNotFoundError / ValueError naming the file and the image id.
  """
  try:
    image = preprocess.read_image(record.image_path)
  except (FileNotFoundError, ValueError) as e:
    raise type(e)(f'{e} (image id {record.image_id})') from None
  return _check_hw(image, record.image_path, record.image_id,
                   (record.height, record.width))


def _check_hw(image, name, image_id, expect_hw):
  if expect_hw is not None and tuple(image.shape[:2]) != tuple(expect_hw):
    raise ValueError(
        f'image {name} (image id {image_id}) decodes to size '
        f'{tuple(image.shape[:2])} but the annotation file says (height, '
        f'width) = {tuple(expect_hw)}; annotations would be misplaced')
  return image


def segmentation_to_bitmap(seg: Segmentation, height: int,
                           width: int) -> np.ndarray:
  """MMDetection `_poly2mask`: polygons / RLE -> (H, W) uint8 {0, 1}."""
  if isinstance(seg, dict):
    rle = {'size': [height, width], 'counts': seg['counts']}
  else:
    rle = mask_util.merge(mask_util.frPyObjects(list(seg), height, width))
  return mask_util.decode(rle)
