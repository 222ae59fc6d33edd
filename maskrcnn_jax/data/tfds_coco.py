"""TensorFlow-Datasets builder for COCO-format instance datasets (no TF needed).

`CocoInstances` is a `tfds.core.GeneratorBasedBuilder` writing the
`array_record` file format, which tensorflow-datasets can write and read back
(`tfds.data_source`) without TensorFlow. Each example is one image as
`coco.load_coco` parses it (same MMDetection skip/ignore rules; the train
filter for splits marked `train`), in the reader's order (shuffling disabled,
keys = record index), so index i of the TFDS split is record i of the direct
reader.

Features (TF-free on both sides: plain tensors only; `tfds.features.Image`
would need TensorFlow to encode):
  image_bytes: the image file's own bytes (decoded with cv2 by the loader,
    exactly as MMDetection decodes the file);
  image_id int64, file_name text, height/width int32;
  boxes (N, 4) float32 XYXY, labels (N,) int32, ann_ids (N,) int64;
  masks flattened as in `coco.pack_masks`: inst_num_polys (N,) int32 (0 =
    RLE), poly_lengths (P,) int32, poly_coords = the (C,) float64
    coordinates as raw little-endian bytes (tf.train.Example, the
    serialisation, would round floats to float32), rle_counts (R,) bytes
    (COCO compressed RLE);
  ignored_boxes (M, 4) float32, ignored_labels (M,) int32, ignored_ann_ids.
Dataset metadata (`metadata.json`): class_names, cat_ids, and per split the
skip counts and per-image heights, widths, image_ids and instance counts (so a
loader can bucket by orientation and count truncations without reading the
examples).

Configs:
  * `coco2017`: the official COCO 2017 files in the manual dir, either the
    zips (`train2017.zip`, `val2017.zip`, `annotations_trainval2017.zip`) or
    their extracted folders (`train2017/`, `val2017/`,
    `annotations/instances_{train,val}2017.json`); splits 'train' (train
    filter) and 'val' (all images).
  * any COCO-format dataset: `CocoInstancesConfig(name=..., splits={split:
    {'ann_file': ..., 'image_dir': ..., 'train': bool}})`, or `build(...)`.

    builder = tfds_coco.build(data_dir, name='shapes', splits={...})
    builder = tfds_coco.build_coco2017(data_dir, manual_dir='/data/coco_zips')
    source = tfds_coco.TfdsSource(data_dir, 'coco_instances/shapes', 'train')
"""

import dataclasses
import json
import os
import zipfile
from typing import Any, Dict, Optional

import numpy as np
import tensorflow_datasets as tfds

from maskrcnn_jax.data import coco

_COCO2017_SPLITS = {'train': True, 'val': False}

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put the official COCO 2017 files in the manual dir, as zips
  train2017.zip  val2017.zip  annotations_trainval2017.zip
(from https://cocodataset.org/#download) or extracted:
  train2017/  val2017/  annotations/instances_train2017.json
  annotations/instances_val2017.json
"""


@dataclasses.dataclass
class CocoInstancesConfig(tfds.core.BuilderConfig):
  """`splits`: split -> {'ann_file', 'image_dir', 'train'}; None = COCO 2017
  from the manual dir."""
  splits: Optional[Dict[str, Dict[str, Any]]] = None
  check_files: bool = True


class _FolderImages:

  def __init__(self, folder: str):
    self.folder = folder

  def exists(self, name: str) -> bool:
    return os.path.isfile(os.path.join(self.folder, name))

  def read(self, name: str) -> bytes:
    with open(os.path.join(self.folder, name), 'rb') as f:
      return f.read()


class _ZipImages:
  """Images inside a zip, under `prefix/` (e.g. train2017/)."""

  def __init__(self, path: str, prefix: str):
    self.path, self.prefix = path, prefix.rstrip('/') + '/'
    self._zip = zipfile.ZipFile(path)
    self._names = set(self._zip.namelist())

  def exists(self, name: str) -> bool:
    return self.prefix + name in self._names

  def read(self, name: str) -> bytes:
    return self._zip.read(self.prefix + name)


def _features():
  f = tfds.features
  return f.FeaturesDict({
      'image_bytes': f.Tensor(shape=(), dtype=np.object_),
      'image_id': np.int64,
      'file_name': f.Text(),
      'height': np.int32,
      'width': np.int32,
      'boxes': f.Tensor(shape=(None, 4), dtype=np.float32),
      'labels': f.Tensor(shape=(None,), dtype=np.int32),
      'ann_ids': f.Tensor(shape=(None,), dtype=np.int64),
      'inst_num_polys': f.Tensor(shape=(None,), dtype=np.int32),
      'poly_lengths': f.Tensor(shape=(None,), dtype=np.int32),
      # float64 as raw little-endian bytes: tf.train.Example (the
      # serialisation) stores floats as float32.
      'poly_coords': f.Tensor(shape=(), dtype=np.object_),
      'rle_counts': f.Tensor(shape=(None,), dtype=np.object_),
      'ignored_boxes': f.Tensor(shape=(None, 4), dtype=np.float32),
      'ignored_labels': f.Tensor(shape=(None,), dtype=np.int32),
      'ignored_ann_ids': f.Tensor(shape=(None,), dtype=np.int64),
  })


def example_from_record(record: coco.CocoRecord,
                        image_bytes: bytes) -> Dict[str, Any]:
  ex = dict(image_bytes=image_bytes, image_id=record.image_id,
            file_name=record.file_name, height=record.height,
            width=record.width, boxes=record.boxes, labels=record.labels,
            ann_ids=record.ann_ids, ignored_boxes=record.ignored_boxes,
            ignored_labels=record.ignored_labels,
            ignored_ann_ids=record.ignored_ann_ids)
  ex.update(coco.pack_masks(record.masks))
  ex['poly_coords'] = np.asarray(ex['poly_coords'], '<f8').tobytes()
  return ex


def record_from_example(ex: Dict[str, Any], index: int) -> coco.CocoRecord:
  """A TFDS example (as `tfds.data_source` returns it) -> `CocoRecord`."""
  name = ex['file_name']
  name = name.decode('utf-8') if isinstance(name, bytes) else str(name)
  h, w = int(ex['height']), int(ex['width'])
  coords = np.frombuffer(ex['poly_coords'], '<f8').astype(np.float64)
  masks = coco.unpack_masks(ex['inst_num_polys'], ex['poly_lengths'],
                            coords, list(ex['rle_counts']), h, w)
  return coco.CocoRecord(
      index=int(index), image_id=int(ex['image_id']), file_name=name,
      image_path='', height=h, width=w,
      boxes=np.asarray(ex['boxes'], np.float32).reshape(-1, 4),
      labels=np.asarray(ex['labels'], np.int32),
      ann_ids=np.asarray(ex['ann_ids'], np.int64), masks=masks,
      ignored_boxes=np.asarray(ex['ignored_boxes'], np.float32).reshape(-1, 4),
      ignored_labels=np.asarray(ex['ignored_labels'], np.int32),
      ignored_ann_ids=np.asarray(ex['ignored_ann_ids'], np.int64))


class CocoInstances(tfds.core.GeneratorBasedBuilder):
  """COCO-format instance segmentation (boxes, labels, polygon/RLE masks)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [CocoInstancesConfig(
      name='coco2017', description='COCO 2017 instances from local zips or '
      'folders (manual dir).')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def __init__(self, *args, file_format: Optional[str] = None, **kwargs):
    super().__init__(*args, file_format=file_format or 'array_record',
                     **kwargs)
    self._datasets: Dict[str, coco.CocoDataset] = {}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='COCO-format instance dataset parsed with MMDetection '
        "CocoDataset rules (maskrcnn_jax.data.coco).",
        features=_features(),
        disable_shuffling=True,  # keep the reader's order
        metadata=tfds.core.MetadataDict(),
        homepage='https://cocodataset.org')

  # -- split sources --------------------------------------------------------

  def _split_specs(self, dl_manager) -> Dict[str, Dict[str, Any]]:
    cfg = self.builder_config
    if cfg.splits is not None:
      specs = {}
      for split, spec in cfg.splits.items():
        for key in ('ann_file', 'image_dir'):
          if key not in spec:
            raise ValueError(f'split {split!r} of config {cfg.name!r} needs '
                             f'{key!r}')
        images = _FolderImages(spec['image_dir'])
        specs[split] = dict(ann=spec['ann_file'], images=images,
                            image_dir=spec['image_dir'],
                            train=bool(spec.get('train', split == 'train')))
      return specs
    return self._coco2017_specs(os.fspath(dl_manager.manual_dir))

  def _coco2017_specs(self, manual: str) -> Dict[str, Dict[str, Any]]:
    specs = {}
    ann_zip = os.path.join(manual, 'annotations_trainval2017.zip')
    for split, train in _COCO2017_SPLITS.items():
      member = f'annotations/instances_{split}2017.json'
      if os.path.isfile(os.path.join(manual, member)):
        ann = os.path.join(manual, member)
      elif os.path.isfile(ann_zip):
        ann = (ann_zip, member)
      else:
        raise FileNotFoundError(
            f'COCO 2017 annotations not found in {manual}: need '
            f'{member} or annotations_trainval2017.zip\n'
            + MANUAL_DOWNLOAD_INSTRUCTIONS)
      folder = os.path.join(manual, f'{split}2017')
      zpath = os.path.join(manual, f'{split}2017.zip')
      if os.path.isdir(folder):
        images, image_dir = _FolderImages(folder), folder
      elif os.path.isfile(zpath):
        images, image_dir = _ZipImages(zpath, f'{split}2017'), zpath
      else:
        raise FileNotFoundError(
            f'COCO 2017 {split} images not found in {manual}: need '
            f'{split}2017/ or {split}2017.zip\n' + MANUAL_DOWNLOAD_INSTRUCTIONS)
      specs[split] = dict(ann=ann, images=images, image_dir=image_dir,
                          train=train)
    return specs

  def _load(self, spec) -> coco.CocoDataset:
    ann = spec['ann']
    if isinstance(ann, tuple):  # (zip, member)
      with zipfile.ZipFile(ann[0]) as z:
        try:
          data = json.loads(z.read(ann[1]))
        except KeyError:
          raise FileNotFoundError(f'{ann[1]} not in {ann[0]}') from None
      ann_name = f'{ann[0]}:{ann[1]}'
    else:
      if not os.path.isfile(ann):
        raise FileNotFoundError(f'annotation file not found: {ann}')
      with open(ann, 'rb') as f:
        data = json.load(f)
      ann_name = ann
    images = spec['images']
    exists = images.exists if self.builder_config.check_files else None
    return coco.parse_coco(data, ann_file=ann_name, image_dir='',
                           train=spec['train'], file_exists=exists)

  def _split_generators(self, dl_manager):
    specs = self._split_specs(dl_manager)
    meta_splits = {}
    class_names = cat_ids = None
    gens = {}
    for split, spec in specs.items():
      ds = self._load(spec)
      if class_names is None:
        class_names, cat_ids = ds.class_names, ds.cat_ids
      elif (ds.class_names, ds.cat_ids) != (class_names, cat_ids):
        raise ValueError(f'split {split!r} has different categories from the '
                         'other splits')
      meta_splits[split] = dict(
          source=str(spec['image_dir']), train=spec['train'],
          skipped=ds.skipped,
          heights=ds.heights.tolist(), widths=ds.widths.tolist(),
          image_ids=ds.image_ids.tolist(),
          num_instances=ds.num_instances().tolist(),
          num_ignored=ds.num_ignored().tolist(),
          num_rle=ds.num_rle().tolist(),
          max_vertices=ds.max_vertices().tolist())
      gens[split] = self._generate_examples(ds, spec['images'])
    self.info.metadata.update(class_names=list(class_names),
                              cat_ids=list(cat_ids), splits=meta_splits)
    return gens

  def _generate_examples(self, ds: coco.CocoDataset, images):
    for record in ds.records:
      try:
        data = images.read(record.file_name)
      except (OSError, KeyError) as e:
        raise FileNotFoundError(
            f'cannot read image {record.file_name} (image id '
            f'{record.image_id}): {e}') from None
      # Fail at build time on an undecodable file, naming it.
      coco.decode_image(data, name=record.file_name, image_id=record.image_id,
                        expect_hw=(record.height, record.width))
      yield record.index, example_from_record(record, data)


def build(data_dir: str, *, name: str, splits: Dict[str, Dict[str, Any]],
          check_files: bool = True, version: str = '1.0.0'
          ) -> CocoInstances:
  """Builds (or reuses) `coco_instances/<name>` in data_dir from COCO JSONs.

  Args:
    splits: split -> {'ann_file': ..., 'image_dir': ..., 'train': bool}
      ('train' defaults to split == 'train').
  """
  cfg = CocoInstancesConfig(name=name, version=version, splits=splits,
                            check_files=check_files)
  builder = CocoInstances(data_dir=data_dir, config=cfg)
  builder.download_and_prepare()
  return builder


def build_coco2017(data_dir: str, manual_dir: str) -> CocoInstances:
  """Builds `coco_instances/coco2017` from local official files."""
  if not os.path.isdir(manual_dir) or not os.listdir(manual_dir):
    raise FileNotFoundError(f'COCO 2017 manual dir {manual_dir} is missing '
                            'or empty.\n' + MANUAL_DOWNLOAD_INSTRUCTIONS)
  builder = CocoInstances(data_dir=data_dir, config='coco2017')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


class TfdsSource:
  """Loader source over a built split, read with `tfds.data_source`.

  Same interface as `pipeline.CocoSource`; `load(i)` returns the record and
  the cv2-decoded image.
  """

  def __init__(self, data_dir: str, name: str, split: str):
    self.data_dir, self.name, self.split = data_dir, name, split
    self.data_source = tfds.data_source(name, data_dir=data_dir, split=split)
    meta = tfds.builder(name, data_dir=data_dir).info.metadata
    if 'splits' not in meta or split not in meta['splits']:
      raise ValueError(f'{name} in {data_dir} has no metadata for split '
                       f'{split!r} (not built by maskrcnn_jax.data.tfds_coco?)')
    m = meta['splits'][split]
    self.class_names = tuple(meta['class_names'])
    self.cat_ids = tuple(int(c) for c in meta['cat_ids'])
    self.skipped = dict(m['skipped'])
    self.heights = np.asarray(m['heights'], np.int32)
    self.widths = np.asarray(m['widths'], np.int32)
    self.image_ids = np.asarray(m['image_ids'], np.int64)
    self._counts = {k: np.asarray(m[k], np.int64) for k in (
        'num_instances', 'num_ignored', 'num_rle', 'max_vertices')}
    if len(self.data_source) != len(self.heights):
      raise ValueError(f'{name}/{split}: {len(self.data_source)} examples but '
                       f'metadata for {len(self.heights)}')
    if not len(self.data_source):
      raise ValueError(f'{name}/{split} in {data_dir} is empty')

  def __len__(self) -> int:
    return len(self.data_source)

  def record(self, i: int) -> coco.CocoRecord:
    return record_from_example(self.data_source[int(i)], i)

  def load(self, i: int):
    ex = self.data_source[int(i)]
    record = record_from_example(ex, i)
    image = coco.decode_image(ex['image_bytes'], name=record.file_name,
                              image_id=record.image_id,
                              expect_hw=(record.height, record.width))
    return record, image

  def num_instances(self):
    return self._counts['num_instances']

  def num_ignored(self):
    return self._counts['num_ignored']

  def num_rle(self):
    return self._counts['num_rle']

  def max_vertices(self):
    return self._counts['max_vertices']
