"""Library side of demo.py: images in, drawn images and predictions out."""

import json
import os
from typing import Iterable, List, Optional, Sequence

import cv2
import numpy as np
import tqdm

from maskrcnn_jax import predictor as predictor_lib
from maskrcnn_jax import preprocess
from maskrcnn_jax import visualize

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff',
                    '.webp')


def list_images(path: str) -> List[str]:
  """An image file, or the image files of a folder (sorted)."""
  if os.path.isdir(path):
    files = sorted(os.path.join(path, f) for f in os.listdir(path)
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
      raise FileNotFoundError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) '
                              f'in {path}')
    return files
  if not os.path.isfile(path):
    raise FileNotFoundError(f'input not found: {path}')
  return [path]


def run_demo(config_path: Optional[str], checkpoint: str, input_path: str,
             out_dir: str, score_thr: float = 0.3, batch_size: int = 1,
             dtype: Optional[str] = None,
             overrides: Sequence[str] = ()) -> List[dict]:
  """Writes <out_dir>/<stem>.png and <out_dir>/predictions.json.

  config_path None: the config stored in the checkpoint directory.
  Returns the prediction records (one dict per detection of every image).
  """
  from maskrcnn_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  config = checkpoint_lib.resolve_config(config_path, checkpoint, overrides)
  files = list_images(input_path)
  predictor = predictor_lib.Predictor.from_checkpoint(
      config, checkpoint, batch_size=batch_size, dtype=dtype)
  os.makedirs(out_dir, exist_ok=True)
  records = []
  for start in tqdm.trange(0, len(files), batch_size, desc='demo',
                           unit='batch'):
    batch = files[start:start + batch_size]
    images = [preprocess.read_image(f) for f in batch]
    for path, image, det in zip(batch, images, predictor.predict(images)):
      name = os.path.basename(path)
      records += visualize.detections_to_records(
          name, det.boxes, det.scores, det.labels, det.masks,
          det.class_names)
      drawn = visualize.draw_detections(image[..., ::-1], det.boxes,
                                        det.scores, det.labels, det.masks,
                                        det.class_names, score_thr)
      stem = os.path.splitext(name)[0]
      cv2.imwrite(os.path.join(out_dir, stem + '.png'), drawn[..., ::-1])
  with open(os.path.join(out_dir, 'predictions.json'), 'w') as f:
    json.dump(records, f)
  print(f'{len(records)} detections in {len(files)} images -> {out_dir}')
  return records
