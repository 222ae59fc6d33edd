"""Shared pytest fixtures."""

import os
import tempfile

import pytest

# The repository root: `python -m pytest` run there puts it on sys.path (and
# pyproject.toml's `pythonpath = ["."]` does for a bare `pytest`).
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One persistent XLA compilation cache for this test session, shared with
# the subprocesses the tests start (train.py runs compile the same
# programs), so each program is compiled once.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      tempfile.mkdtemp(prefix='maskrcnn_jax_xla_cache_'))

# Small canvases keep CPU compile/run times of full models low in unit tests.
SMALL_INPUT = ['input.test_scale=(640, 384)',
               'input.canvases=((384, 640), (640, 384))']


@pytest.fixture(scope='session')
def fixture_checkpoint(tmp_path_factory):
  """Converted inference checkpoint of the r50_fpn fixture weights."""
  from maskrcnn_jax.testing import make_checkpoint
  out = tmp_path_factory.mktemp('ckpt') / 'r50_fpn'
  return make_checkpoint.make_checkpoint('r50_fpn', str(out))
