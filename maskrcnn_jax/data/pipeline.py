"""Training data loader on grain: shuffled, aspect-grouped, resumable, sharded.

    source = pipeline.CocoSource(coco.load_coco(ann, images, train=True))
    # or tfds_coco.TfdsSource(data_dir, 'coco_instances/coco2017', 'train')
    loader = pipeline.TrainLoader(source, config, batch_size=2, seed=0,
                                  num_workers=2)
    it = iter(loader)
    batch = next(it)                 # dict of numpy arrays, leading dim B
    state = it.get_state()           # JSON-serialisable
    it2 = loader.iterator(state)     # (or a fresh loader) continues exactly

Sampling (MMDetection's `AspectRatioBatchSampler` over a shuffled sampler):
for each epoch e, the record indices are permuted with a generator seeded by
(seed, e); walking that permutation, each index goes to its orientation
bucket (portrait iff width < height), and a bucket emits a GLOBAL batch when
it holds `batch_size * shard_count` indices. Every global batch is therefore
one orientation, hence one canvas (`transforms.canvas_for`), on every host.
Leftovers of both buckets at the end of an epoch are dropped (MMDetection
would emit them as a mixed batch; fixed shapes forbid that), so every epoch
has the same number of steps, `batches_per_epoch`. Host h of H takes slice
[h*B, (h+1)*B) of every global batch (`jax.process_index()` /
`jax.process_count()` by default), so hosts stay in lockstep.

Augmentation randomness: example (epoch e, record i) uses
`np.random.default_rng([seed, 1, e, i])`, independent of batch position,
worker count and host count.

Execution: a `grain.MapDataset` over flat example positions -> load + transform
-> `.batch(B)` (one element = one host batch), `.to_iter_dataset()` and, with
`num_workers > 0`, `.mp_prefetch()` (worker processes, each producing whole
batches; order is deterministic and the same for any worker count). The
iterator state is `{'step': n, 'fingerprint': ...}`: restoring re-slices the
MapDataset at step n, which is exact whatever the worker count. The
fingerprint (dataset size and ids, seed, global batch size, recipe) guards
against restoring into a different pipeline.

Batch keys (B = per-host batch size; N = max_instances, M = max_ignored,
S = mask_crop, V = max_polygon_vertices):
  image (B, Hc, Wc, 3) uint8 BGR canvas; image_hw, pad_hw, ori_hw (B, 2)
  int32; scale_factor (B, 2) float32 (w, h); flip (B,) bool; image_id (B,)
  int64; index (B,) int64 (record index in the source); gt_boxes (B, N, 4)
  float32; gt_labels (B, N) int32 (-1 pad); gt_valid (B, N) bool;
  gt_num_dropped (B,) int32; gt_ignored_boxes (B, M, 4); gt_ignored_labels
  (B, M); gt_ignored_valid (B, M); gt_masks (B, N, S, S) uint8; polygon
  recipes add gt_polygons (B, N, V, 2) float32 and gt_polygon_ids (B, N, V)
  int32.
"""

import hashlib
import json
import logging
from typing import Any, Dict, Optional, Tuple

import numpy as np

from maskrcnn_jax.data import coco
from maskrcnn_jax.data import transforms

log = logging.getLogger(__name__)

_SHUFFLE_TAG, _AUGMENT_TAG = 0, 1


class CocoSource:
  """Random-access source over a `coco.CocoDataset` (images read from disk).

  Sources expose `load(i) -> (CocoRecord, uint8 BGR image)`, `__len__`,
  `heights`, `widths`, `image_ids`, `class_names`, `cat_ids` and the per-image
  counts `num_instances()`, `num_ignored()`, `num_rle()`, `max_vertices()`.
  """

  def __init__(self, dataset: coco.CocoDataset):
    self.dataset = dataset
    self.heights, self.widths = dataset.heights, dataset.widths
    self.image_ids = dataset.image_ids
    self.class_names, self.cat_ids = dataset.class_names, dataset.cat_ids

  def __len__(self) -> int:
    return len(self.dataset)

  def load(self, i: int):
    record = self.dataset.record(int(i))
    return record, coco.load_image(record)

  def num_instances(self):
    return self.dataset.num_instances()

  def num_ignored(self):
    return self.dataset.num_ignored()

  def num_rle(self):
    return self.dataset.num_rle()

  def max_vertices(self):
    return self.dataset.max_vertices()


def epoch_batches(is_portrait: np.ndarray, global_batch: int, seed: int,
                  epoch: int, shuffle: bool = True) -> np.ndarray:
  """(batches_per_epoch, global_batch) record indices of one epoch.

  Exactly what walking the (shuffled) order with two orientation buckets and
  emitting each bucket when full gives; leftovers dropped.
  """
  is_portrait = np.asarray(is_portrait, bool)
  n = len(is_portrait)
  order = (np.random.default_rng([seed, _SHUFFLE_TAG, epoch]).permutation(n)
           if shuffle else np.arange(n))
  batches, emit_pos = [], []
  for bucket in (False, True):
    pos = np.flatnonzero(is_portrait[order] == bucket)
    k = len(pos) // global_batch
    if k:
      pos = pos[:k * global_batch].reshape(k, global_batch)
      batches.append(order[pos])
      emit_pos.append(pos[:, -1])  # a batch is emitted with its last index
  if not batches:
    return np.zeros((0, global_batch), np.int64)
  batches = np.concatenate(batches)
  return batches[np.argsort(np.concatenate(emit_pos), kind='stable')].astype(
      np.int64)


def batches_per_epoch(is_portrait: np.ndarray, global_batch: int) -> int:
  p = int(np.sum(is_portrait))
  return p // global_batch + (len(is_portrait) - p) // global_batch


class _LoadExample:
  """Flat example position -> transformed example (runs in the workers)."""

  def __init__(self, source, tcfg: transforms.TransformConfig, seed: int,
               shuffle: bool, batch_size: int, shard_index: int,
               global_batch: int, steps_per_epoch: int, is_portrait):
    self.source, self.tcfg, self.seed, self.shuffle = source, tcfg, seed, shuffle
    self.batch_size, self.shard_index = batch_size, shard_index
    self.global_batch, self.steps_per_epoch = global_batch, steps_per_epoch
    self.is_portrait = np.asarray(is_portrait, bool)
    self._plan: Tuple[int, Optional[np.ndarray]] = (-1, None)

  def __getstate__(self):
    d = dict(self.__dict__)
    d['_plan'] = (-1, None)
    return d

  def record_index(self, position: int) -> Tuple[int, int]:
    step, j = divmod(int(position), self.batch_size)
    epoch, b = divmod(step, self.steps_per_epoch)
    if self._plan[0] != epoch:
      self._plan = (epoch, epoch_batches(self.is_portrait, self.global_batch,
                                         self.seed, epoch, self.shuffle))
    return epoch, int(self._plan[1][b, self.shard_index * self.batch_size + j])

  def __call__(self, position: int) -> Dict[str, np.ndarray]:
    epoch, idx = self.record_index(position)
    record, image = self.source.load(idx)
    rng = np.random.default_rng([self.seed, _AUGMENT_TAG, epoch, idx])
    ex = transforms.train_transform(record, image, rng, self.tcfg)
    ex['index'] = np.int64(idx)
    return ex


def _worker_init(worker_index: int, worker_count: int) -> None:
  """As MMDetection's setup_multi_processes: no OpenCV threads in workers
  (the workers are the parallelism; nested cv2 threads oversubscribe)."""
  del worker_index, worker_count
  import cv2  # pylint: disable=g-import-not-at-top
  cv2.setNumThreads(0)


def _ensure_absl_flags_parsed():
  """grain's worker launch reads absl flags; libraries may not have parsed."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class TrainLoader:
  """Deterministic, resumable, aspect-grouped training loader (see module doc).

  Args:
    source: `CocoSource` or `tfds_coco.TfdsSource`.
    config: project config (train.* / input.*) or a
      `transforms.TransformConfig`.
    batch_size: per-host batch size B.
    seed: shuffling and augmentation seed.
    num_workers: grain worker processes (0: in this process).
    shard_index, shard_count: this host and the host count; default
      `jax.process_index()` / `jax.process_count()`.
    num_epochs: None = endless.
    shuffle: shuffle each epoch (False: dataset order, still bucketed).
    read_threads, prefetch: grain ReadOptions per process (threads, batches
      buffered).
  """

  def __init__(self, source, config, *, batch_size: int, seed: int = 0,
               num_workers: int = 0, shard_index: Optional[int] = None,
               shard_count: Optional[int] = None,
               num_epochs: Optional[int] = None, shuffle: bool = True,
               read_threads: int = 1, prefetch: int = 2):
    import grain  # pylint: disable=g-import-not-at-top
    self._grain = grain
    if shard_index is None or shard_count is None:
      import jax  # pylint: disable=g-import-not-at-top
      shard_index = jax.process_index() if shard_index is None else shard_index
      shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
      raise ValueError(f'shard_index {shard_index} not in [0, {shard_count})')
    if batch_size <= 0:
      raise ValueError(f'batch_size must be positive, got {batch_size}')
    self.tcfg = (config if isinstance(config, transforms.TransformConfig)
                 else transforms.TransformConfig.from_config(config))
    self.source = source
    self.batch_size, self.seed = int(batch_size), int(seed)
    self.num_workers, self.shuffle = int(num_workers), bool(shuffle)
    self.shard_index, self.shard_count = int(shard_index), int(shard_count)
    self.global_batch = self.batch_size * self.shard_count
    self.read_threads, self.prefetch = int(read_threads), int(prefetch)
    self.is_portrait = np.asarray(source.widths) < np.asarray(source.heights)
    self.batches_per_epoch = batches_per_epoch(self.is_portrait,
                                               self.global_batch)
    if self.batches_per_epoch == 0:
      raise ValueError(
          f'no full batch: {len(source)} images ({int(self.is_portrait.sum())} '
          f'portrait) and a global batch of {self.global_batch}')
    self.num_epochs = num_epochs
    epochs = 10**6 if num_epochs is None else int(num_epochs)
    self.total_steps = epochs * self.batches_per_epoch
    self.counts = self._static_counts()
    self._load = _LoadExample(source, self.tcfg, self.seed, self.shuffle,
                              self.batch_size, self.shard_index,
                              self.global_batch, self.batches_per_epoch,
                              self.is_portrait)
    ds = grain.MapDataset.range(self.total_steps * self.batch_size)
    self._batched = ds.map(self._load).batch(self.batch_size,
                                             drop_remainder=True)
    self.fingerprint = self._fingerprint()

  def _static_counts(self) -> Dict[str, int]:
    """Per-image conditions that truncate or alter GT; logged once."""
    t = self.tcfg
    n_inst = np.asarray(self.source.num_instances())
    n_ign = np.asarray(self.source.num_ignored())
    counts = {}
    if t.with_masks and t.mask_format == 'polygon':
      n_rle = np.asarray(self.source.num_rle())
      counts['rle_instances_ignored'] = int(n_rle.sum())
      n_inst = n_inst - n_rle
      n_ign = n_ign + n_rle
      counts['images_polygons_simplified'] = int(
          (np.asarray(self.source.max_vertices()) > t.max_polygon_vertices
           ).sum())
    over = n_inst > t.max_instances
    counts['images_over_max_instances'] = int(over.sum())
    counts['instances_dropped'] = int((n_inst - t.max_instances)[over].sum())
    over_ign = n_ign > t.max_ignored
    counts['images_over_max_ignored'] = int(over_ign.sum())
    nonzero = {k: v for k, v in counts.items() if v}
    if nonzero:
      log.warning(
          'training data: %s (max_instances=%d keeps the first instances in '
          'annotation order; max_ignored=%d; max_polygon_vertices=%d)',
          ', '.join(f'{k}={v}' for k, v in nonzero.items()), t.max_instances,
          t.max_ignored, t.max_polygon_vertices)
    return counts

  def _fingerprint(self) -> str:
    ids = np.asarray(self.source.image_ids, np.int64)
    desc = dict(n=len(self.source), ids=hashlib.sha1(ids.tobytes()).hexdigest(),
                seed=self.seed, global_batch=self.global_batch,
                shuffle=self.shuffle, tcfg=repr(self.tcfg))
    return hashlib.sha1(json.dumps(desc, sort_keys=True).encode()).hexdigest(
    )[:16]

  def epoch_indices(self, epoch: int) -> np.ndarray:
    """(batches_per_epoch, B) record indices this host sees in `epoch`."""
    b = epoch_batches(self.is_portrait, self.global_batch, self.seed, epoch,
                      self.shuffle)
    return b[:, self.shard_index * self.batch_size:
             (self.shard_index + 1) * self.batch_size]

  def _grain_iterator(self, step: int):
    grain = self._grain
    ds = self._batched[step:]
    it_ds = ds.to_iter_dataset(grain.ReadOptions(
        num_threads=self.read_threads, prefetch_buffer_size=self.prefetch))
    if self.num_workers > 0:
      _ensure_absl_flags_parsed()
      it_ds = it_ds.mp_prefetch(
          grain.MultiprocessingOptions(num_workers=self.num_workers),
          worker_init_fn=_worker_init)
    return iter(it_ds)

  def iterator(self, state: Optional[Dict[str, Any]] = None
               ) -> 'LoaderIterator':
    it = LoaderIterator(self)
    if state is not None:
      it.set_state(state)
    return it

  def __iter__(self) -> 'LoaderIterator':
    return self.iterator()


class LoaderIterator:
  """Iterator over host batches with JSON-serialisable state."""

  def __init__(self, loader: TrainLoader):
    self._loader = loader
    self._step = 0
    self._it = None

  @property
  def step(self) -> int:
    """Batches produced so far (global step)."""
    return self._step

  @property
  def epoch(self) -> int:
    """Epoch of the next batch."""
    return self._step // self._loader.batches_per_epoch

  def __iter__(self):
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    if self._step >= self._loader.total_steps:
      raise StopIteration
    if self._it is None:
      self._it = self._loader._grain_iterator(self._step)  # pylint: disable=protected-access
    batch = next(self._it)
    self._step += 1
    # Plain ndarrays: grain's worker batches arrive as shared-memory arrays,
    # copied out here so that /dev/shm is released at once.
    return {k: (v if type(v) is np.ndarray else np.array(v))  # pylint: disable=unidiomatic-typecheck
            for k, v in batch.items()}

  def get_state(self) -> Dict[str, Any]:
    return {'step': self._step, 'fingerprint': self._loader.fingerprint}

  def set_state(self, state: Dict[str, Any]) -> None:
    if not isinstance(state, dict) or 'step' not in state:
      raise ValueError(f'not a loader state: {state!r}')
    if state.get('fingerprint') != self._loader.fingerprint:
      raise ValueError(
          'loader state is from a different pipeline (dataset, seed, global '
          f'batch or recipe differ): fingerprint {state.get("fingerprint")} '
          f'vs {self._loader.fingerprint}')
    step = int(state['step'])
    if not 0 <= step <= self._loader.total_steps:
      raise ValueError(f'state step {step} out of range')
    self.close()
    self._step = step

  def close(self) -> None:
    if self._it is not None:
      close = getattr(self._it, 'close', None)
      if close is not None:
        close()
      self._it = None

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass
