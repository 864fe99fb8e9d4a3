"""What a person sees in the terminal: quiet TensorFlow, a log file, progress bars, header/summary.

Standard library only, and TensorFlow-free at import time: entry points call `quiet_tensorflow`
after parsing their flags and BEFORE TensorFlow is imported, then `setup_log_file`::

    console.quiet_tensorflow(verbosity)            # the -v / --verbosity value; >= 1 shows all
    console.setup_log_file(os.path.join(model_dir, console.LOG_FILE_NAME))
    from simclr_tf2.training import runner                  # TensorFlow loads here

Why an fd-level filter: TensorFlow 2.21's C++ code logs through absl before `absl::InitializeLog`,
which writes every message (oneDNN notice, "Could not find cuda drivers", the `cuInit` error on a
GPU-less machine, tf.data notices) straight to file descriptor 2 and ignores TF_CPP_MIN_LOG_LEVEL
for the lines printed while the shared libraries load. TF_ENABLE_ONEDNN_OPTS=0 would hide one of
them but changes the numerics, and CUDA_VISIBLE_DEVICES does not stop the `cuInit` call. So in
quiet mode descriptor 2 goes through a pipe whose reader moves C++ log lines into the log file and
passes everything else through; Python's own `sys.stderr` keeps the terminal directly. Caveat: a
C++ crash message (LOG(FATAL)) may be lost in quiet mode; rerun with `-v 1` to see it.
"""

import atexit
import collections
import logging
import os
import re
import shutil
import sys
import threading
import time
from typing import Iterable, Mapping, Optional, Sequence, TextIO, Union

LOG_FILE_NAME = 'log.txt'
# Records of these loggers reach the console in quiet mode from WARNING on ('root' is where
# `logging.info(...)` of this project's modules goes); everything else only from ERROR on.
PROJECT_LOGGERS = ('root', 'simclr_tf2', 'checkpoints_conversion')
CPP_LOGGER = 'tensorflow.cpp'  # C++ lines captured from descriptor 2 (log file only)
QUIET_LEVEL = logging.CRITICAL + 1  # above every level: a muted handler
# A record from TensorFlow's C++ loggers: absl (`I0000 00:00:1796081715.378154  5495 port.cc:153] `),
# the older tsl format (`2026-11-30 23:36:23.529410: W tensorflow/...] `), and absl's pre-init notice.
CPP_LOG_LINE = re.compile(
    rb'^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^\s\]]+:\d+\] '
    rb'|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] '
    rb'|WARNING: All log messages before absl::InitializeLog\(\) is called)')
_LOG_FORMAT = '%(asctime)s %(levelname).1s %(name)s %(filename)s:%(lineno)d] %(message)s'

_state = {'quiet': False, 'memory': None, 'file': None, 'filter': None}


def is_quiet() -> bool:
  """Whether quiet_tensorflow ran with verbosity < 1 in this process."""
  return _state['quiet']


class _ConsoleFilter(logging.Filter):
  """Quiet console: project warnings and anyone's errors; never captured C++ lines."""

  def filter(self, record):
    if record.name == CPP_LOGGER or record.name.startswith(CPP_LOGGER + '.'):
      return False
    project = any(record.name == name or record.name.startswith(name + '.')
                  for name in PROJECT_LOGGERS)
    return record.levelno >= (logging.WARNING if project else logging.ERROR)


class _ConsoleFormatter(logging.Formatter):
  def format(self, record):
    return f'{record.levelname.lower()}: {record.getMessage()}'


class _FileFormatter(logging.Formatter):
  """absl-like lines; captured C++ lines are written as they were printed."""

  def format(self, record):
    if record.name == CPP_LOGGER:
      return record.getMessage()
    return super().format(record)


class _EarlyRecords(logging.Handler):
  """The newest records logged before the log file's path is known."""

  def __init__(self, capacity=20000):
    super().__init__()
    self.records = collections.deque(maxlen=capacity)

  def emit(self, record):
    self.records.append(record)


class _DescriptorFilter:
  """Reads what is written to descriptor 2 and drops TensorFlow C++ log lines from the console."""

  def __init__(self):
    self.console = os.dup(2)  # the terminal (or whatever stderr was)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    self._read_end = read_end
    self._cpp_logger = logging.getLogger(CPP_LOGGER)
    self._cpp_logger.setLevel(logging.DEBUG)  # independent of the root (console) level
    self._thread = threading.Thread(target=self._pump, name='stderr-filter', daemon=True)
    self._thread.start()

  def _pump(self):
    pending = b''
    while True:
      chunk = os.read(self._read_end, 65536)
      if not chunk:
        break
      *lines, pending = (pending + chunk).split(b'\n')
      self._dispatch(lines)
    if pending:
      self._dispatch([pending])
    os.close(self._read_end)

  def _dispatch(self, lines):
    # A C++ message is written with one write(); its continuation lines (e.g. cpu_feature_guard's
    # "To enable the following instructions") arrive in the same chunk without a prefix.
    in_record = False
    passed = []
    for line in lines:
      in_record = bool(CPP_LOG_LINE.match(line)) or (in_record and bool(line))
      if in_record:
        self._cpp_logger.info(line.decode('utf-8', 'replace'))
      else:
        passed.append(line + b'\n')
    if passed:
      os.write(self.console, b''.join(passed))

  def close(self):
    """Restores descriptor 2; the reader drains the pipe and stops."""
    os.dup2(self.console, 2)  # closes the pipe's last write end: the reader sees EOF
    self._thread.join(timeout=5)


def quiet_tensorflow(verbosity: int = 0) -> None:
  """Quiet console for verbosity < 1; at verbosity >= 1 (absl `-v 1`) nothing is changed.

  Call once per process, from an entry point, before TensorFlow is imported. Quiet mode: C++ log
  lines leave the console (they go to the log file), Python warnings are logged instead of
  printed, TensorFlow's and Keras' Python log records below ERROR leave the console, and this
  project's own warnings are printed as `warning: ...` lines. Until `setup_log_file` is called,
  records are buffered in memory so the log file gets them from the start.
  """
  if _state['memory'] is None and _state['file'] is None:
    _state['memory'] = _EarlyRecords()
    logging.getLogger().addHandler(_state['memory'])
  if verbosity >= 1 or _state['quiet']:
    return
  _state['quiet'] = True
  logging.captureWarnings(True)  # `py.warnings` logger: log file only
  _state['filter'] = _DescriptorFilter()
  # Python's own stderr keeps the real terminal: errors and warnings are never delayed.
  sys.stderr.flush()
  sys.stderr = open(_state['filter'].console, 'w', buffering=1, encoding='utf-8',
                    errors='backslashreplace', closefd=False)
  root = logging.getLogger()
  for handler in root.handlers:  # absl's handler prints records with C++-like prefixes
    stream_handler = (isinstance(handler, logging.StreamHandler) and
                      not isinstance(handler, logging.FileHandler))
    if stream_handler or type(handler).__name__ == 'ABSLHandler':
      handler.setLevel(QUIET_LEVEL)
  console = logging.StreamHandler(sys.stderr)
  console.addFilter(_ConsoleFilter())
  console.setFormatter(_ConsoleFormatter())
  root.addHandler(console)
  atexit.register(_restore_descriptor)


def _restore_descriptor():
  if _state['filter'] is not None:
    sys.stderr.flush()
    _state['filter'].close()
    _state['filter'] = None


def setup_log_file(path: str) -> str:
  """Appends the complete log (this project, TensorFlow's Python logger, absl, Python warnings
  and, in quiet mode, TensorFlow's C++ lines) to `path`, whatever the console shows."""
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  if _state['file'] is not None:
    if _state['file'].baseFilename == os.path.abspath(path):
      return path
    logging.getLogger().removeHandler(_state['file'])
    _state['file'].close()
  handler = logging.FileHandler(path, encoding='utf-8')
  handler.setFormatter(_FileFormatter(_LOG_FORMAT))
  root = logging.getLogger()
  if root.getEffectiveLevel() > logging.INFO:
    root.setLevel(logging.INFO)
  memory = _state['memory']
  if memory is not None:  # what was logged before the path was known
    root.removeHandler(memory)
    for record in memory.records:
      handler.handle(record)
    _state['memory'] = None
  root.addHandler(handler)
  _state['file'] = handler
  return path


def _duration(seconds: float) -> str:
  seconds = int(round(max(seconds, 0)))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def _number(value) -> str:
  if isinstance(value, float):
    return format(value, '.4g')
  return str(value)


class Progress:
  """A live progress line for one phase: steps, metrics, images/s and ETA.

  On a terminal the line is redrawn in place with `\\r`; otherwise every update prints one plain
  line, so logs of CI systems and job schedulers stay readable. `images_per_step` (e.g. the global
  batch size) enables the images/s figure. The rate and ETA are measured from the first update
  on, so the tracing time of the first block does not distort them.
  """

  BAR_WIDTH = 20

  def __init__(self, total: int, title: str, unit: str = 'step', images_per_step: int = 0,
               stream: Optional[TextIO] = None, clock=time.monotonic):
    self.total = max(int(total), 0)
    self.title = title
    self.unit = unit
    self.images_per_step = images_per_step
    self.stream = stream if stream is not None else sys.stdout
    self._clock = clock
    self._start = clock()
    self._first = None  # (time, done) of the first update
    self._width = 0  # length of the last line drawn in place
    self._closed = False

  @property
  def interactive(self) -> bool:
    isatty = getattr(self.stream, 'isatty', None)
    return bool(isatty and isatty())

  def format(self, done: int, metrics: Mapping[str, object]) -> str:
    """The progress line for `done` steps and `metrics` (no newline)."""
    now = self._clock()
    parts = [self.title]
    if self.total:
      filled = int(self.BAR_WIDTH * min(done, self.total) / self.total)
      parts.append('[' + '#' * filled + '.' * (self.BAR_WIDTH - filled) + ']')
      parts.append(f'{done}/{self.total} {self.unit}s')
    else:
      parts.append(f'{done} {self.unit}s')
    parts += [f'{name} {_number(value)}' for name, value in metrics.items()]
    first_time, first_done = self._first or (self._start, 0)
    rate = (done - first_done) / (now - first_time) if now > first_time and done > first_done \
        else None
    if rate and self.images_per_step:
      parts.append(f'{rate * self.images_per_step:.1f} images/s')
    if rate and self.total and done < self.total:
      parts.append(f'ETA {_duration((self.total - done) / rate)}')
    elif self.total and done >= self.total:
      parts.append(f'{_duration(now - self._start)} total')
    return '  '.join(parts)

  def update(self, done: int, **metrics) -> None:
    line = self.format(done, metrics)
    if self._first is None:
      self._first = (self._clock(), done)
    if self.interactive:
      columns = shutil.get_terminal_size((120, 24)).columns - 1
      line = line[:columns]
      self.stream.write('\r' + line + ' ' * max(self._width - len(line), 0))
      self._width = len(line)
    else:
      self.stream.write(line + '\n')
    self.stream.flush()

  def close(self) -> None:
    """Ends the in-place line (terminal); idempotent."""
    if not self._closed and self.interactive and self._width:
      self.stream.write('\n')
      self.stream.flush()
    self._closed = True

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()


def _listing(values: Union[str, Iterable[str], Mapping[str, str]]) -> str:
  if isinstance(values, str):
    return values
  if isinstance(values, Mapping):
    return ', '.join(f'{name} {value}' for name, value in values.items())
  return ', '.join(str(value) for value in values)


def print_header(title: str, devices: Union[str, Sequence[str]],
                 outputs: Union[str, Sequence[str], Mapping[str, str]],
                 stream: Optional[TextIO] = None) -> str:
  """One line: what runs, on which devices, where outputs go. Returns the line."""
  line = f'{title} | devices: {_listing(devices) or "-"} | outputs: {_listing(outputs) or "-"}'
  print(line, file=stream or sys.stdout, flush=True)
  return line


def print_summary(metrics: Mapping[str, object], paths: Mapping[str, str],
                  seconds: Optional[float] = None, stream: Optional[TextIO] = None) -> str:
  """`done [in N s]: name value, ...` then one `  name: path` line per output. Returns the text."""
  head = 'done' if seconds is None else f'done in {seconds:.1f} s'
  if metrics:
    head += ': ' + ', '.join(f'{name} {_number(value)}' for name, value in metrics.items())
  text = '\n'.join([head] + [f'  {name}: {path}' for name, path in paths.items() if path])
  print(text, file=stream or sys.stdout, flush=True)
  return text


def device_names() -> Sequence[str]:
  """Short names of the logical devices TensorFlow will use (imports TensorFlow)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  devices = tf.config.list_logical_devices()
  return [device.name.replace('/device:', '') for device in devices] or ['CPU']
