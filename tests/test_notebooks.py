"""Executes notebooks/*.ipynb with their tiny parameters (nbclient).

Each notebook has one code cell tagged `parameters`; the test appends
`TINY = True` and a temporary WORKDIR to it (as papermill would) and runs
every cell in a fresh python3 kernel started in notebooks/ (the notebooks'
set-up cell finds the repository root from there). The fixture weights
(../shared/fixtures) stand in for MMDetection's checkpoints, so nothing is
downloaded.
"""

import json
import os
import re
import time

import nbformat
import pytest

from maskrcnn_jax import zoo
from tests.conftest import REPO

NOTEBOOK_DIR = os.path.join(REPO, 'notebooks')
NOTEBOOKS = ('inference', 'convert', 'finetune')
CELL_TIMEOUT = 600


def _read(name):
  return nbformat.read(os.path.join(NOTEBOOK_DIR, f'{name}.ipynb'),
                       as_version=4)


def _parameters_cell(nb):
  cells = [c for c in nb.cells
           if 'parameters' in c.get('metadata', {}).get('tags', [])]
  assert len(cells) == 1, 'exactly one cell must be tagged "parameters"'
  return cells[0]


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_is_clean_and_colab_ready(name):
  nb = _read(name)
  nbformat.validate(nb)
  assert nb.nbformat == 4
  for cell in nb.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None, (
          f'{name}: outputs not cleared')
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert "'google.colab' in sys.modules" in code[0].source
  params = _parameters_cell(nb).source
  assert re.search(r'^TINY = False', params, re.M)
  assert re.search(r'^WORKDIR = ', params, re.M)
  assert re.search(r'^CACHE_DIR = ', params, re.M)
  text = json.dumps([c.source for c in nb.cells])
  for absolute in ('/work/', '/home/', '/tmp/', '/root/', '/Users/', 'C:\\\\'):
    assert absolute not in text, f'{name}: local absolute path {absolute}'


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_executes_tiny(name, tmp_path):
  # The notebooks run on the fixture weights here (no downloads in tests);
  # a missing fixtures folder is an error, not a skip.
  assert zoo.fixtures_available(), (
      'reference fixtures (../shared/fixtures) not found; set '
      'MASKRCNN_FIXTURES')
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top
  nb = _read(name)
  cell = _parameters_cell(nb)
  workdir = tmp_path / 'work'
  cell.source += ('\n# Injected by tests/test_notebooks.py\nTINY = True\n'
                  f'WORKDIR = {str(workdir)!r}\n'
                  f'CACHE_DIR = {str(tmp_path / "cache")!r}\n')
  if name == 'finetune':
    cell.source += f'DATA_DIR = {str(tmp_path / "data")!r}\n'
  client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name='python3',
                          resources={'metadata': {'path': NOTEBOOK_DIR}})
  start = time.perf_counter()
  client.execute()  # raises CellExecutionError naming the failing cell
  elapsed = time.perf_counter() - start
  print(f'{name}.ipynb executed in {elapsed:.0f} s')

  outputs = '\n'.join(
      o.get('text', '') for c in nb.cells if c.cell_type == 'code'
      for o in c.outputs if o.get('output_type') == 'stream')
  images = sum('image/png' in o.get('data', {}) for c in nb.cells
               if c.cell_type == 'code' for o in c.outputs)
  assert images >= 1, f'{name}: no figure'
  if name == 'inference':
    assert (workdir / 'prediction.png').is_file()
    assert json.loads((workdir / 'predictions.json').read_text())
    assert 'detections drawn' in outputs
  elif name == 'convert':
    assert 'strict check passed' in outputs
    assert 'missing keys' in outputs and 'unexpected keys' in outputs
    assert 'largest difference 0.0' in outputs
  else:
    assert (workdir / 'final').is_dir()
    records = [json.loads(l) for l in open(workdir / 'metrics.jsonl')]
    assert any('loss_mask' in r for r in records)
    assert any('val/segm_mAP' in r for r in records)
    assert (workdir / 'ap.png').is_file()
    # Fine-tuned from the fixture COCO weights: 80 -> 6 classes.
    assert 'fixture_r50_fpn.pth' in outputs
    assert 're-initialised class-dependent layers' in outputs
