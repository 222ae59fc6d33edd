"""A training workdir: one run at a time, and the config it was started with.

* `WorkdirLock`: `<workdir>/train.lock` holds the host, pid and start time of
  the run using the workdir, under an exclusive `flock`. A second run stops
  at once naming the holder. The kernel drops the flock when a run dies
  (kill -9 included), so a leftover file is recognised as stale and taken
  over; where the filesystem has no flock, a file whose pid is not alive on
  this host is stale. Multi-host: only process 0 takes the lock.
* `check_resume_config`: on resume, the config is compared with the one the
  workdir was last run with (`config.json`, then `config.<step>.json` for
  each resume with changes). Keys that only steer the run (`RUN_KEYS`:
  logging, checkpoint cadence, workers) may change freely; schedule and
  evaluation keys (`RESUME_SAFE_KEYS`) only with `allow_changes`
  (train.py --allow_config_change); anything else (model, input, data,
  batch) stops the run, naming the keys. Changes are written to
  `config.<step>.json`; `config.json` stays the first run's.
"""

import datetime
import errno
import fnmatch
import json
import logging
import os
import socket
from typing import Any, Dict, List, Optional, Tuple

import ml_collections

from maskrcnn_jax import errors

log = logging.getLogger(__name__)

LOCK_NAME = 'train.lock'
CONFIG_NAME = 'config.json'

# Keys that change how the run is driven, never its results.
RUN_KEYS = ('train.log_every', 'train.checkpoint_every',
            'train.keep_checkpoints', 'train.num_workers')
# Keys safe to change on resume with --allow_config_change: the learning
# rate schedule, evaluation and its data, the run's name.
RESUME_SAFE_KEYS = ('name', 'train.base_lr', 'train.epochs',
                    'train.milestones', 'train.warmup_iters',
                    'train.warmup_ratio', 'train.eval_every', 'test.*',
                    'data.val_ann', 'data.val_images', 'mmdet.*')


class WorkdirInUseError(errors.UserError):
  """Another live run holds the workdir."""


class ConfigChangedError(errors.UserError):
  """The resumed config differs from the workdir's in unsafe keys."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def _describe(holder: Dict[str, Any]) -> str:
  return (f'host {holder.get("host")!r}, pid {holder.get("pid")}, started '
          f'{holder.get("start")}')


class WorkdirLock:
  """Exclusive lock of a workdir for the lifetime of a training run."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_NAME)
    self._fd = None

  def _read(self) -> Optional[Dict[str, Any]]:
    try:
      with open(self.path) as f:
        holder = json.load(f)
      return holder if isinstance(holder, dict) else None
    except (OSError, ValueError):
      return None

  def acquire(self) -> 'WorkdirLock':
    """Takes the lock; WorkdirInUseError naming the holder if it is taken."""
    import fcntl  # pylint: disable=g-import-not-at-top
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise errors.UserError(
          f'cannot write to the workdir {os.path.dirname(self.path)}: '
          f'{e.strerror}') from e
    host = socket.gethostname()
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      flocked = True
    except BlockingIOError:
      holder = self._read() or {}
      os.close(fd)
      raise WorkdirInUseError(
          f'workdir {os.path.dirname(self.path)} is in use by another '
          f'training run ({_describe(holder)}); wait for it to finish, stop '
          f'it, or use another --workdir') from None
    except OSError as e:  # no flock on this filesystem
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
        os.close(fd)
        raise
      flocked = False
    previous = self._read()
    if previous:
      same_host = previous.get('host') == host
      pid = previous.get('pid')
      if not flocked and (not same_host or (
          isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid))):
        os.close(fd)
        raise WorkdirInUseError(
            f'workdir {os.path.dirname(self.path)} is locked by '
            f'{_describe(previous)}; if that run is no longer running, '
            f'delete {self.path}')
      log.warning('stale lock of a run that ended without releasing it '
                  '(%s) in %s: taking it over', _describe(previous),
                  self.path)
    holder = dict(host=host, pid=os.getpid(),
                  start=datetime.datetime.now().isoformat(timespec='seconds'))
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return self

  def release(self):
    if self._fd is None:
      return
    try:
      os.remove(self.path)
    except OSError:
      pass
    os.close(self._fd)
    self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


# ---------------------------------------------------------------------------
# Config history.


def flatten(tree: Any, prefix: str = '') -> Dict[str, Any]:
  """{'a.b': value} of a nested dict; tuples become lists (JSON form)."""
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(flatten(v, f'{prefix}{k}.'))
    if not tree and prefix:
      out[prefix[:-1]] = {}
    return out
  if isinstance(tree, (tuple, list)):
    return {prefix[:-1]: [_plain(v) for v in tree]}
  return {prefix[:-1]: _plain(tree)}


def _plain(v):
  if isinstance(v, (tuple, list)):
    return [_plain(x) for x in v]
  if isinstance(v, dict):
    return {k: _plain(x) for k, x in v.items()}
  return v


def config_as_json(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def _matches(key: str, patterns) -> bool:
  return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def stored_configs(workdir: str) -> List[Tuple[int, str]]:
  """(step, path) of the workdir's config files; config.json is step 0."""
  out = []
  for name in os.listdir(workdir):
    if name == CONFIG_NAME:
      out.append((0, os.path.join(workdir, name)))
    elif name.startswith('config.') and name.endswith('.json'):
      middle = name[len('config.'):-len('.json')]
      if middle.isdigit():
        out.append((int(middle), os.path.join(workdir, name)))
  return sorted(out)


def diff_configs(old: Dict[str, Any], new: Dict[str, Any]
                 ) -> List[Tuple[str, Any, Any]]:
  """(key, old value, new value) of every differing leaf, sorted by key."""
  a, b = flatten(old), flatten(new)
  missing = object()
  out = []
  for k in sorted(set(a) | set(b)):
    va, vb = a.get(k, missing), b.get(k, missing)
    if va != vb:
      out.append((k, None if va is missing else va,
                  None if vb is missing else vb))
  return out


def check_resume_config(workdir: str, config: ml_collections.ConfigDict,
                        resume_step: int, allow_changes: bool = False,
                        write: bool = True) -> List[str]:
  """Compares `config` with the workdir's latest stored config on resume.

  Returns the changed keys (accepted). Writes `config.<resume_step>.json`
  when something changed (and `write`).

  Raises:
    ConfigChangedError: a key outside RUN_KEYS changed without
      `allow_changes`, or a key outside RUN_KEYS + RESUME_SAFE_KEYS changed.
  """
  stored = stored_configs(workdir)
  new = config_as_json(config)
  if not stored:
    log.warning('%s has checkpoints but no %s: cannot check that the '
                'config is the one the checkpoints were trained with',
                workdir, CONFIG_NAME)
    if write:
      write_config(os.path.join(workdir, CONFIG_NAME), config)
    return []
  step, path = stored[-1]
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, ValueError) as e:
    raise errors.UserError(f'cannot read the stored config {path}: {e}')
  changes = diff_configs(old, new)
  if not changes:
    return []
  shown = lambda items: '; '.join(f'{k}: {a!r} -> {b!r}' for k, a, b in items)
  unsafe = [c for c in changes
            if not _matches(c[0], RUN_KEYS + RESUME_SAFE_KEYS)]
  if unsafe:
    raise ConfigChangedError(
        f'resuming {workdir} at step {resume_step} with a config that differs '
        f'from {os.path.basename(path)} in keys that cannot change in a run: '
        f'{shown(unsafe[:6])}' + (f' (+{len(unsafe) - 6} more)'
                                  if len(unsafe) > 6 else '') +
        '; use the stored config or a new --workdir')
  gated = [c for c in changes if not _matches(c[0], RUN_KEYS)]
  if gated and not allow_changes:
    raise ConfigChangedError(
        f'resuming {workdir} at step {resume_step} with a config that differs '
        f'from {os.path.basename(path)}: {shown(gated)}; pass '
        '--allow_config_change to accept these changes (schedule/evaluation '
        'keys), or use the stored config')
  log.warning('resuming with config changes (kept in config.%d.json): %s',
              resume_step, shown(changes))
  if write:
    write_config(os.path.join(workdir, f'config.{resume_step}.json'), config)
  return [c[0] for c in changes]


def write_config(path: str, config: ml_collections.ConfigDict):
  """Writes config JSON atomically."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(config.to_json_best_effort(indent=2))
  os.replace(tmp, path)
