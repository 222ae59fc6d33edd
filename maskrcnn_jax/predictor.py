"""`Predictor`: numpy images in, detections at original resolution out.

    predictor = Predictor.from_checkpoint(config, 'model.pth')  # or a dir
    predictor = Predictor.from_checkpoint(None, 'work_dirs/x/final')  # its config
    predictor = Predictor.from_pretrained('r50_fpn_1x')  # zoo row, cached
    det = predictor(cv2.imread('image.jpg'))  # BGR uint8, as cv2 reads it
    det.boxes, det.scores, det.labels, det.masks, det.class_names

Images go onto one of the config's fixed canvases and through one jitted
program per (canvas, batch size): any stream of images compiles at most
`len(config.input.canvases)` programs. The batch is sharded over all local
devices on a 1-D 'data' mesh.

For pipelined use (evaluation), `dispatch` starts a device step and returns
at once (JAX dispatch is asynchronous); `fetch` waits for it and copies the
outputs to the host. `run_device` is the two in sequence. The device step
can also return the RPN proposals (`outputs='proposals'` or `'both'`), and
can run with other variables than the predictor's own (e.g. a training
loop's current parameters).
"""

import dataclasses
from typing import Dict, Iterable, List, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from maskrcnn_jax import masks as mask_ops
from maskrcnn_jax import preprocess
from maskrcnn_jax.models import build
from maskrcnn_jax.models import mask_rcnn

# What a device step returns: detections (MaskRCNN.predict), RPN proposals,
# or both from one forward pass.
OUTPUTS = ('detections', 'proposals', 'both')


def _proposals_fn(module, images, image_hw, pad_hw):
  """RPN proposals only: backbone, FPN, RPN (`MaskRCNN.proposals`)."""
  feats = module.features(images, image_hw, pad_hw)
  boxes, scores, valid = module.proposals(feats, image_hw, pad_hw)
  return dict(proposal_boxes=boxes, proposal_scores=scores,
              proposal_valid=valid)


def _predict_and_proposals_fn(module, images, image_hw, pad_hw):
  """`MaskRCNN.predict` plus the proposals it computed on the way.

  The proposals are captured with a Flax method interceptor around the
  unchanged `predict`, so nothing runs twice.
  """
  captured = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if (context.method_name == 'proposals' and
        isinstance(context.module, mask_rcnn.MaskRCNN)):
      captured.append(out)
    return out

  with nn.intercept_methods(interceptor):
    out = module.predict(images, image_hw, pad_hw)
  if len(captured) != 1:
    raise RuntimeError(f'expected one proposals() call in predict, got '
                       f'{len(captured)}')
  boxes, scores, valid = captured[0]
  return dict(out, proposal_boxes=boxes, proposal_scores=scores,
              proposal_valid=valid)


@dataclasses.dataclass
class PendingStep:
  """A dispatched device step: device arrays not yet copied to the host.

  Attributes:
    outputs: device arrays (padded to the batch size).
    num_images: how many leading entries are real images.
  """
  outputs: Dict[str, jax.Array]
  num_images: int


@dataclasses.dataclass
class Detections:
  """Detections of one image, in original-image pixels.

  Attributes:
    boxes: (N, 4) float32 XYXY.
    scores: (N,) float32, descending.
    labels: (N,) int32 0-based class indices.
    masks: (N, H, W) bool at the original image size.
    class_names: names indexed by label.
  """
  boxes: np.ndarray
  scores: np.ndarray
  labels: np.ndarray
  masks: np.ndarray
  class_names: Sequence[str]

  def __len__(self):
    return len(self.scores)

  @property
  def categories(self) -> List[str]:
    return [self.class_names[i] for i in self.labels]


def data_mesh(devices=None) -> jax.sharding.Mesh:
  """1-D mesh named 'data' over the given (default: all local) devices."""
  devices = np.asarray(devices if devices is not None else jax.local_devices())
  return jax.sharding.Mesh(devices.reshape(-1), ('data',))


class Predictor:
  """Batched, jitted Mask R-CNN inference with host-side mask pasting."""

  def __init__(self, config: ml_collections.ConfigDict, variables,
               class_names: Sequence[str], batch_size: int = 1,
               mesh: Optional[jax.sharding.Mesh] = None,
               dtype: Optional[str] = None):
    """Args:
      config: a model-zoo config.
      variables: {'params', 'batch_stats'} of the model.
      class_names: one name per class, len == config.model.num_classes.
      batch_size: images per device step (padded when fewer remain); must
        divide by the number of devices in `mesh`.
      mesh: 1-D 'data' mesh; default all local devices that divide
        batch_size.
      dtype: compute dtype override ('float32', 'bfloat16', 'float16');
        default `config.test.dtype`, else `config.model.dtype`.
    """
    if len(class_names) != config.model.num_classes:
      raise ValueError(f'{len(class_names)} class names for a model with '
                       f'num_classes={config.model.num_classes}')
    self.config = config
    self.class_names = tuple(class_names)
    self.batch_size = batch_size
    if mesh is None:
      devices = jax.local_devices()
      n = max(d for d in range(1, len(devices) + 1) if batch_size % d == 0)
      mesh = data_mesh(devices[:n])
    if batch_size % mesh.size:
      raise ValueError(f'batch_size {batch_size} does not divide over '
                       f'{mesh.size} devices')
    self.mesh = mesh
    self.model = build.build_model(
        config, dtype=dtype or config.test.get('dtype') or None)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self._batch_sharding = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec('data'))
    self._replicated = replicated
    self.variables = jax.device_put(variables, replicated)
    self._predict = jax.jit(
        lambda v, images, image_hw, pad_hw: self.model.apply(
            v, images, image_hw, pad_hw, method='predict'))
    self._programs = {
        'detections': self._predict,
        'proposals': jax.jit(
            lambda v, images, image_hw, pad_hw: self.model.apply(
                v, images, image_hw, pad_hw, method=_proposals_fn)),
        'both': jax.jit(
            lambda v, images, image_hw, pad_hw: self.model.apply(
                v, images, image_hw, pad_hw,
                method=_predict_and_proposals_fn)),
    }

  @classmethod
  def from_checkpoint(cls, config: Optional[ml_collections.ConfigDict],
                      path: str, **kwargs) -> 'Predictor':
    """Loads an MMDetection .pth or a checkpoint directory.

    Args:
      config: the model's config; None: the config stored in the checkpoint
        directory (a converted or fine-tuned model runs as it was made).
      path: .pth file or checkpoint directory.
      **kwargs: see `__init__` (batch_size, mesh, dtype).
    """
    from maskrcnn_jax import checkpoint  # Local: pulls in orbax.
    if config is None:
      config = checkpoint.resolve_config(None, path)
    variables, class_names = checkpoint.load_detector_variables(
        path, config, expected=build.abstract_variables(config))
    return cls(config, variables, class_names, **kwargs)

  @classmethod
  def from_pretrained(cls, name_or_dir: str,
                      cache_dir: Optional[str] = None,
                      weights: str = 'zoo', **kwargs) -> 'Predictor':
    """A model-zoo row by name, or a checkpoint directory.

    A row name (`r50_fpn_1x`, see `zoo.rows()`) gets its MMDetection
    checkpoint (`zoo.get_checkpoint`: downloaded once), converted once into
    `<cache_dir>/converted/<name>`; later calls load that directory with no
    network access.

    Args:
      name_or_dir: row name or checkpoint directory (its stored config).
      cache_dir: downloads and conversions (default `zoo.default_cache_dir()`).
      weights: 'zoo' (the published checkpoint) or 'fixture'/'auto' (see
        `zoo.get_checkpoint`).
      **kwargs: see `__init__` (batch_size, mesh, dtype).
    """
    import os  # pylint: disable=g-import-not-at-top
    from maskrcnn_jax import config as config_lib  # pylint: disable=g-import-not-at-top
    from maskrcnn_jax import zoo  # pylint: disable=g-import-not-at-top
    if os.path.isdir(name_or_dir):
      return cls.from_checkpoint(None, name_or_dir, **kwargs)
    if name_or_dir not in config_lib.config_names():
      raise FileNotFoundError(
          f'{name_or_dir!r} is neither a checkpoint directory nor a '
          f'model-zoo row ({", ".join(r.name for r in zoo.rows())})')
    directory = zoo.get_converted(name_or_dir, weights=weights,
                                  cache_dir=cache_dir)
    return cls.from_checkpoint(None, directory, **kwargs)

  @property
  def num_compiled(self) -> int:
    """Number of programs compiled so far (one per canvas/batch shape)."""
    return self._predict._cache_size()  # pylint: disable=protected-access

  def prepare(self, image_bgr: np.ndarray) -> preprocess.PreparedImage:
    i = self.config.input
    return preprocess.prepare_image(image_bgr, tuple(i.test_scale),
                                    i.canvases, i.size_divisor)

  def replicate(self, variables):
    """Places variables replicated on this predictor's mesh (for
    `dispatch(..., variables=...)`)."""
    return jax.device_put(variables, self._replicated)

  def dispatch(self, prepared: Sequence[preprocess.PreparedImage],
               outputs: str = 'detections',
               variables=None) -> PendingStep:
    """Starts a device step on <= batch_size images sharing one canvas.

    Returns without waiting for the device; `fetch` gets the results.

    Args:
      prepared: the images (padded with copies up to batch_size).
      outputs: 'detections' (`MaskRCNN.predict`), 'proposals' (RPN only:
        proposal_boxes (B, P, 4) in resized-image pixels, proposal_scores,
        proposal_valid) or 'both'.
      variables: run with these variables instead of `self.variables`
        (best placed with `replicate` once).
    """
    if outputs not in OUTPUTS:
      raise ValueError(f'outputs must be one of {OUTPUTS}, got {outputs!r}')
    n = len(prepared)
    if not 0 < n <= self.batch_size:
      raise ValueError(f'expected 1..{self.batch_size} images, got {n}')
    canvas_shape = prepared[0].canvas.shape
    if any(p.canvas.shape != canvas_shape for p in prepared):
      raise ValueError('images of one device step must share a canvas')
    pad = self.batch_size - n
    images = np.stack([p.canvas for p in prepared] +
                      [np.zeros_like(prepared[0].canvas)] * pad)
    image_hw = np.asarray([p.image_hw for p in prepared] +
                          [prepared[0].image_hw] * pad, np.int32)
    pad_hw = np.asarray([p.pad_hw for p in prepared] +
                        [prepared[0].pad_hw] * pad, np.int32)
    args = jax.device_put((images, image_hw, pad_hw), self._batch_sharding)
    out = self._programs[outputs](
        self.variables if variables is None else variables, *args)
    return PendingStep(outputs=out, num_images=n)

  @staticmethod
  def fetch(step: PendingStep) -> Dict[str, np.ndarray]:
    """Waits for a dispatched step; its outputs as numpy, real images only."""
    return {k: np.asarray(v)[:step.num_images]
            for k, v in step.outputs.items()}

  def run_device(self, prepared: Sequence[preprocess.PreparedImage],
                 outputs: str = 'detections', variables=None
                 ) -> Dict[str, np.ndarray]:
    """Device step on <= batch_size images sharing one canvas.

    Returns the padded outputs of `MaskRCNN.predict` as numpy (plus or
    instead the proposals, see `dispatch`), for the given images only.
    """
    return self.fetch(self.dispatch(prepared, outputs, variables))

  def unpad(self, out: Dict[str, np.ndarray], index: int,
            prepared: preprocess.PreparedImage):
    """One image's valid detections, boxes rescaled to the original image.

    Returns:
      boxes (N, 4) float32 XYXY in original pixels, scores (N,), labels
      (N,) int32, mask_logits (N, 28, 28) float32.
    """
    valid = out['valid'][index]
    scale = np.asarray(prepared.scale_factor * 2, np.float32)
    boxes = (out['boxes'][index][valid] / scale).astype(np.float32)
    return (boxes, out['scores'][index][valid],
            out['labels'][index][valid].astype(np.int32),
            out['mask_logits'][index][valid])

  @staticmethod
  def unpad_proposals(out: Dict[str, np.ndarray], index: int,
                      prepared: preprocess.PreparedImage):
    """One image's valid proposals (boxes in original pixels, scores)."""
    valid = out['proposal_valid'][index]
    scale = np.asarray(prepared.scale_factor * 2, np.float32)
    boxes = (out['proposal_boxes'][index][valid] / scale).astype(np.float32)
    return boxes, out['proposal_scores'][index][valid].astype(np.float32)

  def postprocess(self, out: Dict[str, np.ndarray], index: int,
                  prepared: preprocess.PreparedImage,
                  with_masks: bool = True) -> Detections:
    """Unpads one image's outputs, rescales boxes and pastes its masks."""
    boxes, scores, labels, logits = self.unpad(out, index, prepared)
    if with_masks:
      masks = mask_ops.paste_mask_logits(logits, boxes, prepared.ori_hw,
                                         self.config.test.mask_thr_binary)
    else:
      masks = np.zeros((len(boxes),) + tuple(prepared.ori_hw), bool)
    return Detections(boxes=boxes, scores=scores, labels=labels,
                      masks=masks, class_names=self.class_names)

  def predict(self, images: Iterable[np.ndarray]) -> List[Detections]:
    """Detections for each uint8 BGR (H, W, 3) image, in input order."""
    prepared = [self.prepare(im) for im in images]
    results: List[Optional[Detections]] = [None] * len(prepared)
    by_canvas: Dict[tuple, List[int]] = {}
    for i, p in enumerate(prepared):
      by_canvas.setdefault(p.canvas.shape, []).append(i)
    for indices in by_canvas.values():
      for start in range(0, len(indices), self.batch_size):
        chunk = indices[start:start + self.batch_size]
        out = self.run_device([prepared[i] for i in chunk])
        for j, i in enumerate(chunk):
          results[i] = self.postprocess(out, j, prepared[i])
    return results

  def __call__(self, image_bgr: np.ndarray) -> Detections:
    return self.predict([image_bgr])[0]
