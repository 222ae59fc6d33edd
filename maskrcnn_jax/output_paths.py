"""Output file names that never overwrite an input or another output.

Used by every command that writes one file per input image (demo.py,
eval.py --show-dir, tools/browse_dataset.py).
"""

import collections
import os
from typing import List, Sequence

from maskrcnn_jax import errors


def output_names(files: Sequence[str]) -> List[str]:
  """File name of the drawing of each input (same order), all distinct.

  `<stem>.png`, except for inputs whose stem another input shares, which get
  `<stem>_<ext>.png` (x.jpg, x.png -> x_jpg.png, x_png.png); a name still
  taken gets `_2`, `_3`, ... before `.png`.
  """
  stems = [os.path.splitext(os.path.basename(f)) for f in files]
  shared = collections.Counter(stem for stem, _ in stems)
  names, taken = [], set()
  for stem, ext in stems:
    base = stem if shared[stem] == 1 else f'{stem}_{ext.lstrip(".").lower()}'
    name, k = base + '.png', 1
    while name.lower() in taken:
      k += 1
      name = f'{base}_{k}.png'
    taken.add(name.lower())
    names.append(name)
  return names


def check_no_overwrite(inputs: Sequence[str], outputs: Sequence[str]):
  """UserError if an output path is one of the input files (before any work).

  Outputs may overwrite files of an earlier run, never an input.
  """
  real = {os.path.realpath(f): f for f in inputs}
  clashes = [(o, real[os.path.realpath(o)]) for o in outputs
             if os.path.realpath(o) in real]
  if clashes:
    o, i = clashes[0]
    raise errors.UserError(
        f'output {o} would overwrite the input {i}'
        + (f' (and {len(clashes) - 1} more)' if len(clashes) > 1 else '')
        + '; choose an --out-dir that is not the input folder')
