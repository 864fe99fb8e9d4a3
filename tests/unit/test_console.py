"""The console: progress lines (terminal and plain), header/summary, and a quiet conversion CLI."""

import io
import re


from simclr_tf2 import console

# Lines of TensorFlow's C++ loggers (absl and tsl formats) and of Python's warnings module.
CPP_LOG_LINE = re.compile(r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] |[IWE]\d{4} )')
PYTHON_WARNING = re.compile(r'Warning: ')


class FakeClock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


class Terminal(io.StringIO):
  def isatty(self):
    return True


def _run_progress(stream):
  """Three updates of a 10-step phase at t = 10, 14 and 16 s, 8 images per step."""
  clock = FakeClock()
  progress = console.Progress(10, 'pretrain', images_per_step=8, stream=stream, clock=clock)
  for now, done, loss in ((10, 2, 7.3012), (14, 6, 6.5), (16, 10, 6.0)):
    clock.now = now
    progress.update(done, loss=loss)
  progress.close()


# Rate and ETA by hand: first update from the start (2 steps / 10 s), later ones from the first
# update on: (6-2)/(14-10) = 1 step/s -> 8 images/s, 4 steps left -> 4 s; (10-2)/(16-10) steps/s.
EXPECTED_LINES = [
    'pretrain  [####................]  2/10 steps  loss 7.301  1.6 images/s  ETA 0:00:40',
    'pretrain  [############........]  6/10 steps  loss 6.5  8.0 images/s  ETA 0:00:04',
    'pretrain  [####################]  10/10 steps  loss 6  10.7 images/s  0:00:16 total',
]


def test_progress_prints_one_plain_line_per_update_when_not_a_terminal():
  stream = io.StringIO()
  _run_progress(stream)
  assert stream.getvalue() == ''.join(line + '\n' for line in EXPECTED_LINES)


def test_progress_redraws_one_line_on_a_terminal(monkeypatch):
  monkeypatch.setenv('COLUMNS', '200')
  stream = Terminal()
  _run_progress(stream)
  first, second, third = EXPECTED_LINES  # each erases what is left of the longer previous one
  assert [len(first), len(second), len(third)] == [83, 81, 83]
  assert stream.getvalue() == '\r' + first + '\r' + second + '  ' + '\r' + third + '\n'


def test_progress_line_is_cut_to_the_terminal_width(monkeypatch):
  monkeypatch.setenv('COLUMNS', '31')
  stream = Terminal()
  progress = console.Progress(10, 'pretrain', stream=stream, clock=FakeClock())
  progress.update(1)
  assert stream.getvalue() == '\r' + 'pretrain  [##' + '.' * 17  # 31 columns - 1


def test_header_is_one_line_and_summary_lists_metrics_then_paths():
  stream = io.StringIO()
  line = console.print_header('simclr-tf2 pretrain', ['CPU:0', 'CPU:1'], '/tmp/run',
                              stream=stream)
  assert stream.getvalue() == line + '\n'
  assert line == 'simclr-tf2 pretrain | devices: CPU:0, CPU:1 | outputs: /tmp/run'
  stream = io.StringIO()
  console.print_summary({'top-1': 0.912345, 'step': 42},
                        {'checkpoint': '/tmp/run/ckpt-42', 'saved_model': '/tmp/run/sm/42',
                         'missing': None}, seconds=3.21, stream=stream)
  assert stream.getvalue() == ('done in 3.2 s: top-1 0.9123, step 42\n'
                               '  checkpoint: /tmp/run/ckpt-42\n'
                               '  saved_model: /tmp/run/sm/42\n')


