"""The package's user-facing errors: one class hierarchy, one-line messages, OS failures named.

Every error a user can cause or fix (bad setting, unreadable checkpoint, model_dir in use, disk
full, diverged training) is a `SimCLRError` whose message is one line, so entry points catch one
class and print `error: <message>`. Subclasses also derive from the builtin class callers caught
before (ValueError, RuntimeError, OSError). Nothing here imports TensorFlow at import time, so
settings can be checked before TensorFlow loads.
"""

import contextlib
import errno
import sys

MAX_MESSAGE_CHARS = 500


class SimCLRError(Exception):
  """Base of the package's one-line errors (what entry points report without a traceback)."""


class ConfigError(SimCLRError, ValueError):
  """A setting is invalid (raised by Config.validate before TensorFlow loads)."""


class CheckpointError(SimCLRError, ValueError):
  """A checkpoint is missing, unreadable, non-finite or does not fit the model."""


class TeacherError(CheckpointError):
  """The distillation teacher cannot be used: unreadable, no supervised head, wrong classes."""


class TrainingError(SimCLRError, RuntimeError):
  """Training cannot go on (e.g. it diverged); checkpoints written so far are kept."""


class ModelDirError(SimCLRError):
  """The model_dir cannot be used: in use by another run, not a directory, bad state file."""


class ClusterError(SimCLRError, RuntimeError):
  """The processes of a multi-worker run cannot work together: a bad TF_CONFIG, a busy port,
  workers started with different flags, a worker that stopped."""


class FileSystemError(SimCLRError, OSError):
  """An operating-system failure (permission, disk full, read-only, path is a file)."""


def one_line(error: BaseException, limit: int = MAX_MESSAGE_CHARS) -> str:
  """The first non-empty line of an error's message, at most `limit` characters.

  TensorFlow's OpError keeps its own text in `.message`; the lines after it are graph context.
  A first line ending with ':' introduces a list (e.g. missing checkpoint keys): the following
  lines are then kept, joined by ', ' (by ' ' after a line ending with ':'). An empty message gives the error's class name.
  """
  text = getattr(error, 'message', None)
  if not isinstance(text, str) or not text.strip():
    text = str(error)
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  line = lines[0]
  if line.endswith(':'):
    for item in lines[1:]:
      line += (' ' if line.endswith(':') else ', ') + item
  return line if len(line) <= limit else line[:limit - 3] + '...'


# errno -> what a user reads; anything else uses the system's own wording (strerror).
_ERRNO_REASONS = {
    errno.ENOSPC: 'no space left on the device (disk full)',
    errno.EDQUOT: 'disk quota exceeded',
    errno.EROFS: 'read-only file system',
    errno.EACCES: 'permission denied',
    errno.EPERM: 'operation not permitted',
    errno.ENOTDIR: 'a part of the path is a file, not a directory',
    errno.EISDIR: 'is a directory, not a file',
    errno.EEXIST: 'already exists',
    errno.ENOENT: 'no such file or directory',
    errno.EFBIG: 'file too large (file size limit reached)',
}
# TensorFlow's file-system errors carry the OS's text, not the errno.
_TEXT_REASONS = (
    ('no space left', errno.ENOSPC), ('quota exceeded', errno.EDQUOT),
    ('read-only file system', errno.EROFS), ('permission denied', errno.EACCES),
    ('not a directory', errno.ENOTDIR), ('is a directory', errno.EISDIR),
    ('file too large', errno.EFBIG),
)


def os_failure_reason(error: BaseException) -> str:
  """A short reason for an OSError or a TensorFlow file-system error ('disk full', ...)."""
  code = getattr(error, 'errno', None)
  if isinstance(error, OSError) and code in _ERRNO_REASONS:
    return _ERRNO_REASONS[code]
  text = one_line(error)
  for fragment, text_code in _TEXT_REASONS:
    if fragment in text.lower():
      return _ERRNO_REASONS[text_code]
  if isinstance(error, OSError) and error.strerror:
    return error.strerror[0].lower() + error.strerror[1:]
  return text


def _tensorflow_op_error():
  """tf.errors.OpError if TensorFlow is already loaded (never imports it)."""
  tf = sys.modules.get('tensorflow')
  errors = getattr(tf, 'errors', None)
  return getattr(errors, 'OpError', None)


def _is_file_system_error(error: BaseException) -> bool:
  if isinstance(error, OSError):
    return not isinstance(error, SimCLRError)
  op_error = _tensorflow_op_error()
  return op_error is not None and isinstance(error, op_error)


@contextlib.contextmanager
def os_errors(operation: str, path: str):
  """Turns OS / TensorFlow file-system failures inside the block into a one-line FileSystemError.

  `cannot <operation> <path>: <reason>`, e.g. `cannot save checkpoint /runs/a/ckpt-40: no space
  left on the device (disk full)`. Use it around file I/O only: inside it every tf.errors.OpError
  is taken to be a file-system failure.
  """
  try:
    yield
  except BaseException as error:  # pylint: disable=broad-except
    if not _is_file_system_error(error):
      raise
    raise FileSystemError(f'cannot {operation} {path}: {os_failure_reason(error)}') from error
