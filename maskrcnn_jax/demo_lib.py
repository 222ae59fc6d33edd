"""Library side of demo.py: images in, drawn images and predictions out.

Never writes over an input: drawings of inputs that share a stem get
distinct names (`output_paths.output_names`), and an output path that is an
input file stops the run before any work
(`output_paths.check_no_overwrite`). Unreadable images are skipped, named,
and make the run fail at the end.
"""

import json
import os
import sys
from typing import Iterable, List, Optional, Sequence

import cv2
import numpy as np
import tqdm

from maskrcnn_jax import errors
from maskrcnn_jax import output_paths
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


def write_json_atomic(path: str, obj) -> None:
  """Writes JSON to path.tmp, then renames it over path."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f)
  os.replace(tmp, path)


def draw_and_record(path: str, image, det, drawn_path: str,
                    score_thr: float) -> List[dict]:
  """Draws one image's detections into drawn_path and returns its
  prediction records (image: uint8 BGR as read; det: a Detections)."""
  drawn = visualize.draw_detections(image[..., ::-1], det.boxes, det.scores,
                                    det.labels, det.masks, det.class_names,
                                    score_thr)
  cv2.imwrite(drawn_path, drawn[..., ::-1])
  return visualize.detections_to_records(
      os.path.basename(path), det.boxes, det.scores, det.labels, det.masks,
      det.class_names)


def run_demo(config_path: Optional[str], checkpoint: str, input_path: str,
             out_dir: str, score_thr: float = 0.3, batch_size: int = 1,
             dtype: Optional[str] = None,
             overrides: Sequence[str] = ()) -> List[dict]:
  """Writes <out_dir>/<name>.png (see `output_names`) and predictions.json.

  An image that cannot be read is reported and skipped; predictions.json
  holds the detections of every image read, and is written even when the
  run stops early.

  config_path None: the config stored in the checkpoint directory.
  Returns the prediction records (one dict per detection of every image).

  Raises:
    errors.UserError: an output would overwrite an input (raised before
      anything runs), or some images could not be read (raised at the end,
      naming them, after the results of the others are written).
    FileNotFoundError: config, checkpoint or input missing.
  """
  from maskrcnn_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  config = checkpoint_lib.resolve_config(config_path, checkpoint, overrides)
  files = list_images(input_path)
  names = output_paths.output_names(files)
  predictions_path = os.path.join(out_dir, 'predictions.json')
  output_paths.check_no_overwrite(
      files, [os.path.join(out_dir, n) for n in names] + [predictions_path])
  predictor = predictor_lib.Predictor.from_checkpoint(
      config, checkpoint, batch_size=batch_size, dtype=dtype)
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise errors.UserError(f'cannot create --out-dir {out_dir}: '
                           f'{e.strerror}') from e
  records, failed = [], []
  try:
    for start in tqdm.trange(0, len(files), batch_size, desc='demo',
                             unit='batch'):
      batch, images = [], []
      for path, out_name in zip(files[start:start + batch_size],
                                names[start:start + batch_size]):
        try:
          images.append(preprocess.read_image(path))
        except (OSError, ValueError) as e:
          tqdm.tqdm.write(f'warning: skipping {path}: {e}', file=sys.stderr)
          failed.append(path)
          continue
        batch.append((path, out_name))
      if not batch:
        continue
      for (path, out_name), image, det in zip(batch, images,
                                              predictor.predict(images)):
        records += draw_and_record(path, image, det,
                                   os.path.join(out_dir, out_name),
                                   score_thr)
  finally:
    write_json_atomic(predictions_path, records)
  done = len(files) - len(failed)
  print(f'{len(records)} detections in {done} images -> {out_dir}')
  if failed:
    shown = ', '.join(failed[:5]) + (', ...' if len(failed) > 5 else '')
    raise errors.UserError(
        f'{len(failed)} of {len(files)} images could not be read and were '
        f'skipped ({done} done, in {predictions_path}): {shown}')
  return records
