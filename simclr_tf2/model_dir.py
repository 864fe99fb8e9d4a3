"""The model_dir as a resource: one writer at a time, usable before anything is written, tidy.

  ModelDirLock(model_dir)        the writer lock (train, train_then_eval, export)
  check_model_dir(model_dir)     is a directory (or can be created) and writable; writes nothing
  prepare_model_dir(model_dir)   check_model_dir, then create it
  remove_stale_temporaries(...)  leftovers of a run killed while saving or exporting
  make_worker_scratch_dir()      a non-chief worker's save directory; those of dead workers go
  read_checkpoint_state(...)     the `checkpoint` state file, strictly (no silent restart)

Local paths only for the lock and the clean-up (they rely on POSIX rename/link semantics); for
URLs such as gs:// the lock is skipped with a warning.
"""

import atexit
import datetime
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import uuid
from typing import List, NamedTuple, Optional, Tuple

from simclr_tf2.errors import ModelDirError, one_line, os_errors

logger = logging.getLogger(__name__)

LOCK_FILE_NAME = 'writer.lock'
STATE_FILE_NAME = 'checkpoint'  # TensorFlow's checkpoint state file
SAVED_MODEL_SUBDIR = 'saved_model'  # a run's exports: model_dir/saved_model/<global step>
RUN_CONFIG_FILE = 'config.json'  # every setting of the run (Config.to_dict)
FLAGS_FILE = 'flags.json'  # the command line's flags, like the reference's
SETTINGS_HISTORY_FILE = 'settings_history.jsonl'  # settings changed on resume, one line each

# Leftovers of an interrupted save or export (the writers' temporary names):
#   ckpt-N_temp/                TF's sharded checkpoint save, before merging into ckpt-N.*
#   ckpt-N.index.tempstate123   TF's BundleWriter, before its rename
#   checkpoint.tmp<32 hex>      TF's atomic write of the state file
#   *.json.tmp-<pid>            write_json, before its rename (only if <pid> is dead)
#   saved_model/N.tmp-<8 hex>   export.export_saved_model's staging directory
#   saved_model/N.old-<8 hex>   the previous export moved aside (put back if N is missing)
_CHECKPOINT_TEMPORARY = re.compile(r'.+-\d+_temp(_[0-9a-f]{32})?|.+\.tempstate\d+|'
                                   r'.+\.tmp[0-9a-f]{32}')
_JSON_TEMPORARY = re.compile(r'.+\.json\.tmp-(\d+)')
_EXPORT_TEMPORARY = re.compile(r'(\d+)\.(tmp|old)-[0-9a-f]{8}')


def _is_url(path: str) -> bool:
  return '://' in str(path)


# --- the writer lock ------------------------------------------------------------------------

def _process_start_ticks(pid: int) -> Optional[int]:
  """Start time of a process (Linux /proc), to tell a live pid from a reused one."""
  try:
    with open(f'/proc/{pid}/stat', encoding='ascii') as f:
      return int(f.read().rsplit(')', 1)[1].split()[19])
  except (OSError, ValueError, IndexError):
    return None


def _pid_alive(pid: int, start_ticks: Optional[int]) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    return True
  if start_ticks is not None:
    current = _process_start_ticks(pid)
    return current is None or current == start_ticks
  return True


class LockHolder(NamedTuple):
  pid: int
  host: str
  started: str
  start_ticks: Optional[int]
  token: str

  def describe(self):
    return f'pid {self.pid} on host {self.host}, started {self.started}'


def _read_holder(path: str) -> Optional[LockHolder]:
  """The holder recorded in a lock file; None if it vanished or cannot be parsed."""
  try:
    with open(path, encoding='utf-8') as f:
      values = json.load(f)
    return LockHolder(int(values['pid']), str(values['host']), str(values['started']),
                      values.get('start_ticks'), str(values['token']))
  except FileNotFoundError:
    return None
  except (OSError, ValueError, KeyError, TypeError):
    return LockHolder(-1, '?', '?', None, '')  # unreadable: treated as held by an unknown run


_HELD = {}  # lock path -> ModelDirLock held by this process


class ModelDirLock:
  """Exclusive writer lock of a model_dir: `model_dir/writer.lock` with pid, host, start time.

  `acquire()` creates the lock file atomically (written to a temporary file, then hard-linked to
  its name, which fails if it exists). If another live run holds it, a one-line ModelDirError
  names it. A lock whose process is dead on this host is taken over with a warning. Released by
  `release()`, on leaving the `with` block, and at interpreter exit. Readers (mode=eval) take no
  lock. The model_dir must exist (see prepare_model_dir).
  """

  def __init__(self, model_dir: str):
    self.model_dir = str(model_dir)
    self.path = os.path.join(self.model_dir, LOCK_FILE_NAME)
    self.holder: Optional[LockHolder] = None

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc_info):
    self.release()

  @property
  def held(self) -> bool:
    return self.holder is not None

  def acquire(self) -> 'ModelDirLock':
    if _is_url(self.model_dir):
      logger.warning('No writer lock on %s: locking needs a local file system; make sure no other '
                     'run writes to it.', self.model_dir)
      return self
    if self.held:
      return self
    me = LockHolder(os.getpid(), socket.gethostname(),
                    datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
                    _process_start_ticks(os.getpid()), uuid.uuid4().hex)
    for _ in range(3):  # a stale lock is removed, then creation is tried again
      if self._create(me):
        self.holder = me
        _HELD[self.path] = self
        atexit.register(self.release)
        return self
      other = _read_holder(self.path)
      if other is None:
        continue  # released meanwhile
      if not self._is_stale(other):
        raise ModelDirError(
            f'model_dir {self.model_dir} is in use by another run ({other.describe()}); wait for '
            f'it to finish or use another --model_dir (if no such run exists, delete {self.path})')
      self._take_over(other)
    raise ModelDirError(f'cannot lock model_dir {self.model_dir}: {self.path} keeps changing')

  def _create(self, me: LockHolder) -> bool:
    staging = f'{self.path}.{me.token}'
    with os_errors('write the lock file', self.path):
      try:
        with open(staging, 'w', encoding='utf-8') as f:
          json.dump(me._asdict(), f)
        try:
          os.link(staging, self.path)  # atomic; fails if the lock exists
        except FileExistsError:
          return False
        return True
      finally:
        if os.path.exists(staging):
          os.remove(staging)

  def _is_stale(self, other: LockHolder) -> bool:
    if other.host != socket.gethostname() or other.pid <= 0:
      return False  # another host's (or an unreadable) lock: its process cannot be checked
    if other.pid == os.getpid():
      return self.path not in _HELD  # left by an earlier, abandoned lock object of this process
    return not _pid_alive(other.pid, other.start_ticks)

  def _take_over(self, other: LockHolder):
    """Moves the stale lock aside; if it changed meanwhile (a new holder), puts it back."""
    aside = f'{self.path}.stale-{uuid.uuid4().hex}'
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return
    moved = _read_holder(aside)
    if moved is not None and moved.token != other.token:  # not the lock we judged stale
      try:
        os.link(aside, self.path)
      except FileExistsError:
        pass
    else:
      logger.warning('Taking over the lock of model_dir %s left by a process that no longer runs '
                     '(%s).', self.model_dir, other.describe())
    os.remove(aside)

  def release(self):
    """Removes the lock file if this object still holds it. Safe to call twice."""
    if not self.held:
      return
    current = _read_holder(self.path)
    if current is not None and current.token == self.holder.token:
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass
    _HELD.pop(self.path, None)
    self.holder = None
    atexit.unregister(self.release)


# --- usability of the directory ---------------------------------------------------------------

def check_model_dir(model_dir: str) -> None:
  """One-line error unless model_dir is a directory, or can be created, and is writable.

  Writes nothing that stays: a probe file in an existing directory is removed at once.
  """
  if _is_url(model_dir):
    return
  if os.path.exists(model_dir) and not os.path.isdir(model_dir):
    raise ModelDirError(f'--model_dir={model_dir} is a file, not a directory')
  existing = model_dir
  while not os.path.exists(existing):  # the nearest existing ancestor is where it gets created
    parent = os.path.dirname(os.path.abspath(existing))
    if parent == os.path.abspath(existing):
      break
    existing = parent
  if not os.path.isdir(existing):
    raise ModelDirError(f'cannot create --model_dir={model_dir}: {existing} is a file, not a '
                        'directory')
  probe = os.path.join(existing, f'.write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}')
  with os_errors('write to', existing if existing == model_dir else f'{existing} (to create '
                 f'--model_dir={model_dir})'):
    try:
      with open(probe, 'w', encoding='ascii') as f:
        f.write('probe')
        f.flush()
        os.fsync(f.fileno())
    finally:
      if os.path.exists(probe):
        os.remove(probe)


def prepare_model_dir(model_dir: str) -> None:
  """check_model_dir, then creates the directory (and its parents) if missing."""
  check_model_dir(model_dir)
  if _is_url(model_dir):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.io.gfile.makedirs(model_dir)
    return
  with os_errors('create', f'--model_dir={model_dir}'):
    os.makedirs(model_dir, exist_ok=True)


# --- clean-up -----------------------------------------------------------------------------------

def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path)
  else:
    os.remove(path)


def remove_stale_temporaries(model_dir: str) -> List[str]:
  """Removes what an interrupted checkpoint save, export or JSON write left; returns the paths.

  Call it while holding the writer lock (a live writer's temporaries would be removed too).
  An export moved aside (`saved_model/N.old-*`) whose replacement never arrived is put back.
  """
  if _is_url(model_dir) or not os.path.isdir(model_dir):
    return []
  removed = []
  with os_errors('remove temporary files in', model_dir):
    for name in sorted(os.listdir(model_dir)):
      path = os.path.join(model_dir, name)
      json_temporary = _JSON_TEMPORARY.fullmatch(name)
      if json_temporary and _pid_alive(int(json_temporary.group(1)), None):
        continue  # e.g. a concurrent mode=eval writing its results
      if _CHECKPOINT_TEMPORARY.fullmatch(name) or json_temporary:
        _remove(path)
        removed.append(path)
    export_root = os.path.join(model_dir, SAVED_MODEL_SUBDIR)
    if os.path.isdir(export_root):
      for name in sorted(os.listdir(export_root)):
        match = _EXPORT_TEMPORARY.fullmatch(name)
        if not match:
          continue
        path, final = os.path.join(export_root, name), os.path.join(export_root, match.group(1))
        if match.group(2) == 'old' and not os.path.exists(final):
          os.rename(path, final)  # killed between moving the old export aside and the rename
          logger.warning('Restored export %s from %s.', final, path)
          continue
        _remove(path)
        removed.append(path)
  if removed:
    logger.warning('Removed %d leftover(s) of an interrupted save or export in %s: %s',
                   len(removed), model_dir, ', '.join(os.path.basename(p) for p in removed))
  return removed


# --- a non-chief worker's scratch directory ----------------------------------------------------

WORKER_SCRATCH_PREFIX = 'simclr_worker.'


def make_worker_scratch_dir(parent: Optional[str] = None) -> str:
  """A new directory `simclr_worker.<host>.<pid>.<start ticks>.<random>` in `parent` (default:
  the temporary directory) for a non-chief worker's saves, which its process deletes on exit.

  A worker killed during a save (`kill -9`) cannot delete its own: the scratch directories of
  this host's processes that no longer run are removed first.
  """
  parent = parent or tempfile.gettempdir()
  host = socket.gethostname()
  try:
    names = os.listdir(parent)
  except OSError:  # e.g. a TMPDIR one may write into but not list: nothing to tidy, still save
    names = []
  for name in names:
    if not name.startswith(WORKER_SCRATCH_PREFIX):
      continue
    try:  # host may contain dots: the three fields after it are read from the right
      owner, pid, ticks, _ = name[len(WORKER_SCRATCH_PREFIX):].rsplit('.', 3)
      pid, ticks = int(pid), None if ticks == 'x' else int(ticks)
    except ValueError:
      continue
    if owner == host and not _pid_alive(pid, ticks):
      shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
      logger.info('Removed the scratch directory %s of a worker that no longer runs.', name)
  ticks = _process_start_ticks(os.getpid())
  return tempfile.mkdtemp(dir=parent, prefix=f'{WORKER_SCRATCH_PREFIX}{host}.{os.getpid()}.'
                          f'{"x" if ticks is None else ticks}.')


# --- the checkpoint state file ---------------------------------------------------------------

class CheckpointState(NamedTuple):
  """The parsed `checkpoint` file: newest prefix and all kept prefixes (absolute paths)."""
  latest: Optional[str]
  all: List[str]


def numbered_checkpoints(directory: str, name: str = '') -> List[Tuple[int, str]]:
  """[(N, prefix)] of the checkpoints `<name>-<N>` with an .index file in a directory, by N.

  `name` = '' takes every name (a directory of foreign checkpoints); 'ckpt' those of a run.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  pattern = re.compile(rf'({re.escape(name) if name else ".+"}-(\d+))\.index')
  found = []
  for index_file in tf.io.gfile.glob(os.path.join(directory, '*.index')):
    match = pattern.fullmatch(os.path.basename(index_file))
    if match:
      found.append((int(match.group(2)), index_file[:-len('.index')]))
  return sorted(found)


def write_json(path: str, value) -> None:
  """Writes JSON atomically: readers never see a half-written file."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  temporary = f'{path}.tmp-{os.getpid()}'
  with os_errors('write', path):
    tf.io.gfile.makedirs(os.path.dirname(path) or '.')
    with tf.io.gfile.GFile(temporary, 'w') as f:
      json.dump(value, f, indent=2, sort_keys=True)
    tf.io.gfile.rename(temporary, path, overwrite=True)


def _state_error(path, model_dir, problem):
  prefixes = numbered_checkpoints(model_dir)
  if prefixes:
    advice = (f'delete it to resume from the newest checkpoint ({os.path.basename(prefixes[-1][1])}'
              '), or restore it from a backup')
  else:
    advice = 'no checkpoint is in the directory: delete it to start from step 0'
  return ModelDirError(f'checkpoint state file {path} {problem}; {advice}')


def read_checkpoint_state(model_dir: str) -> Optional[CheckpointState]:
  """The model_dir's `checkpoint` state file, or None if there is none.

  Same reading as tf.train.get_checkpoint_state (relative paths are relative to model_dir), but
  a file TensorFlow would ignore with a warning - and so silently restart from step 0,
  overwriting the run - is a one-line ModelDirError naming the file and what to do. So is a
  state file naming a checkpoint whose `.index` is missing.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from google.protobuf import text_format  # pylint: disable=import-outside-toplevel
  path = os.path.join(model_dir, STATE_FILE_NAME)
  if not tf.io.gfile.exists(path):
    return None
  with os_errors('read', path):
    with tf.io.gfile.GFile(path, 'rb') as f:
      raw = f.read()
  # An empty CheckpointState message, through TensorFlow's public API.
  proto = tf.compat.v1.train.generate_checkpoint_state_proto('.', 'x')
  proto.Clear()
  try:
    text_format.Parse(raw.decode('utf-8'), proto)
  except UnicodeDecodeError:
    raise _state_error(path, model_dir, 'is not text (binary garbage)') from None
  except text_format.ParseError as error:
    raise _state_error(path, model_dir, f'cannot be parsed ({one_line(error, limit=200)})') from None
  if not proto.model_checkpoint_path:
    raise _state_error(path, model_dir, 'names no checkpoint (model_checkpoint_path is empty)')

  def absolute(prefix):
    return prefix if os.path.isabs(prefix) or _is_url(prefix) else os.path.join(model_dir, prefix)

  latest = absolute(proto.model_checkpoint_path)
  if not tf.io.gfile.exists(latest + '.index'):
    raise _state_error(path, model_dir, f'names {proto.model_checkpoint_path}, whose .index file '
                       'is missing')
  return CheckpointState(latest, [absolute(p) for p in proto.all_model_checkpoint_paths])
