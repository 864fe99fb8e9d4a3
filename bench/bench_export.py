"""Time of the SavedModel export (simclr_tf2.network.export) and of its conversion to PyTorch.

    python bench/bench_export.py [--repeats=3] [--baseline_export=OLD/simclr_tf2/export.py]
        [--mirrored] [--no_conversion]

Models: ResNet-18 at 32 px (CIFAR stem, the demo's size class) and ResNet-50 at 64 px, both with a
linear-eval head. Prints the median of `repeats` runs per case and the machine. With
--baseline_export, an export.py from another commit (e.g. `git show COMMIT:simclr_tf2/export.py >
/tmp/export_old.py`) is timed in the same process, interleaved with the current one so machine
noise hits both alike. Nothing is asserted.
"""

import argparse
import contextlib
import importlib.util
import io
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from simclr_tf2.network import export  # noqa: E402
from simclr_tf2.network.model import build_model  # noqa: E402

CASES = (('R18-32px', dict(resnet_depth=18, image_size=32)),
         ('R50-64px', dict(resnet_depth=50, image_size=64)))


def machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  return (f'{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, '
          f'Python {platform.python_version()}, TensorFlow {tf.__version__}')


def load_module(path):
  spec = importlib.util.spec_from_file_location('baseline_export', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def seconds(function) -> float:
  start = time.perf_counter()
  function()
  return time.perf_counter() - start


def convert(saved_model, output):
  from checkpoints_conversion import convert_to_pytorch  # pylint: disable=import-outside-toplevel
  with contextlib.redirect_stdout(io.StringIO()):
    code = convert_to_pytorch.run(['convert', f'--saved_model={saved_model}',
                                   f'--output={output}'])
  if code:
    raise RuntimeError(f'conversion of {saved_model} failed')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--baseline_export', default=None,
                      help='export.py of another commit, timed alongside the current one')
  parser.add_argument('--no_conversion', action='store_true', help='time the export only')
  parser.add_argument('--mirrored', action='store_true',
                      help='build the models in a MirroredStrategy scope, as training does')
  args = parser.parse_args()

  variants = [('current', export)]
  if args.baseline_export:
    variants.append(('baseline', load_module(args.baseline_export)))
  # One strategy per process (separate Mirrored strategies share collective keys).
  strategy = tf.distribute.MirroredStrategy() if args.mirrored else tf.distribute.get_strategy()
  root = tempfile.mkdtemp(prefix='simclr_bench_export_')
  rows = []
  try:
    for case, flags in CASES:
      with strategy.scope():
        model = build_model(10, lineareval_while_pretraining=True, **flags).create_variables()
      times = {(name, what): [] for name, _ in variants for what in ('export', 'convert')}
      for repeat in range(args.repeats):
        for name, module in variants:
          target = os.path.join(root, f'{case}-{name}-{repeat}')
          times[name, 'export'].append(seconds(lambda: module.export_saved_model(model, target)))
          if not args.no_conversion:
            times[name, 'convert'].append(seconds(lambda: convert(target, target + '.pth')))
          print(f'  {case} {name} repeat {repeat + 1}: export '
                f'{times[name, "export"][-1]:.1f} s', file=sys.stderr, flush=True)
      for name, _ in variants:
        convert_times = times[name, 'convert']
        rows.append((case, name, statistics.median(times[name, 'export']),
                     statistics.median(convert_times) if convert_times else None))
  finally:
    shutil.rmtree(root, ignore_errors=True)

  print(f'Machine: {machine()}')
  print(f'Median of {args.repeats} runs, seconds'
        f'{" (models in a MirroredStrategy scope)" if args.mirrored else ""}:')
  print(f'  {"model":10s} {"code":9s} {"export":>7s} {"to PyTorch":>11s}')
  for case, name, export_time, convert_time in rows:
    converted = f'{convert_time:11.1f}' if convert_time is not None else f'{"-":>11s}'
    print(f'  {case:10s} {name:9s} {export_time:7.1f} {converted}')


if __name__ == '__main__':
  main()
