"""--micro_batch_size: peak memory and images/s of a large batch in chunks beside a plain step.

    python bench/bench_micro_batch.py [--repeats=2] [--steps=2] [--quick] [--divide=1]
                                      [--json=FILE]

Per model: a plain step of the chunk size, the large batch in chunks of that size, and the large
batch in one plain step (left out with --quick); --divide=N divides every batch size by
N. Every variant runs in a fresh process (this
script with --worker), round-robin `repeats` times, so machine noise hits all alike; figures are
medians over repeats. Pretraining steps (SimCLRTask.train_step under tf.function, LARS, blur,
linear-eval head) on synthetic images already in memory: the step alone, no input pipeline.

Peak memory: the worker's ru_maxrss (peak resident set of the whole process, TensorFlow's
runtime and the model included) after one warm-up step and the timed steps.
Time: seconds per step of the timed steps (after the warm-up step), as images per second.
Asserts nothing.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {  # name: (resnet_depth, image_size, chunk, large batch)
    'R18-CIFAR 32px': (18, 32, 128, 1024),
    'R50 64px': (50, 64, 32, 256),
}


def worker(args):
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
  sys.path.insert(0, REPO)
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from simclr_tf2.config import Config  # pylint: disable=import-outside-toplevel
  from simclr_tf2.training.task import SimCLRTask  # pylint: disable=import-outside-toplevel
  spec = json.loads(args.worker)
  config = Config(resnet_depth=spec['depth'], image_size=spec['size'],
                  train_batch_size=spec['batch'], micro_batch_size=spec['micro'],
                  use_tpu=False, seed=0, global_bn=False)  # one device: the same BN
  task = SimCLRTask(config, num_classes=10)
  task.build_optimizer(num_train_examples=50000)
  images = tf.random.uniform([spec['batch'], spec['size'], spec['size'], 6], seed=1)
  labels = tf.one_hot(tf.zeros([spec['batch']], tf.int32), 10)
  step = tf.function(task.train_step)
  step(images, labels)  # warm-up: tracing and the first step
  float(task.train_metrics.total_loss.result())
  start = time.perf_counter()
  for _ in range(spec['steps']):
    step(images, labels)
  float(task.train_metrics.total_loss.result())  # waits for the last step
  seconds = (time.perf_counter() - start) / spec['steps']
  print(json.dumps({'images_per_second': spec['batch'] / seconds, 'seconds_per_step': seconds,
                    'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def variants(quick, divide=1):
  for name, (depth, size, chunk, large) in MODELS.items():
    chunk, large = chunk // divide, large // divide
    yield f'{name} b{chunk}', dict(depth=depth, size=size, batch=chunk, micro=0)
    yield f'{name} b{large} in chunks of {chunk}', dict(depth=depth, size=size, batch=large,
                                                         micro=chunk)
    if not quick:
      yield f'{name} b{large}', dict(depth=depth, size=size, batch=large, micro=0)


def cpu_name():
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    return platform.processor()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--steps', type=int, default=2)
  parser.add_argument('--quick', action='store_true', help='leave out the plain large batch')
  parser.add_argument('--divide', type=int, default=1,
                      help='divide every batch size by this (a loaded or slow machine)')
  parser.add_argument('--json', default=None)
  parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    worker(args)
    return
  chosen = list(variants(args.quick, args.divide))
  figures = {name: [] for name, _ in chosen}
  env = dict(os.environ, PYTHONPATH=REPO)
  for repeat in range(args.repeats):
    for name, spec in chosen:
      spec = dict(spec, steps=args.steps)
      done = subprocess.run([sys.executable, __file__, '--worker', json.dumps(spec)],
                            capture_output=True, text=True, env=env, check=False)
      if done.returncode:
        figures[name].append({'error': (done.stderr.strip().splitlines() or ['?'])[-1]})
      else:
        figures[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
      print(f'repeat {repeat + 1}: {name}: {figures[name][-1]}', file=sys.stderr, flush=True)
  print(f'CPU: {cpu_name()} ({os.cpu_count()} logical CPUs, shared with other jobs); '
        f'medians of {args.repeats} fresh processes, {args.steps} timed steps each')
  print('| configuration | images/s | s/step | peak RSS MiB | memory vs chunk-size step | '
        'time per image vs chunk-size step |')
  print('|---|---|---|---|---|---|')
  rows, base = {}, None
  for name, spec in chosen:
    runs = [f for f in figures[name] if 'error' not in f]
    if not runs:
      print(f'| {name} | failed: {figures[name][-1]["error"]} | | | | |')
      continue
    row = {key: statistics.median(f[key] for f in runs)
           for key in ('images_per_second', 'seconds_per_step', 'peak_rss_mib')}
    rows[name] = row
    if spec['micro'] == 0 and spec['batch'] == MODELS[name.split(' b')[0]][2] // args.divide:
      base = row
    print(f'| {name} | {row["images_per_second"]:.1f} | {row["seconds_per_step"]:.2f} | '
          f'{row["peak_rss_mib"]:.0f} | {row["peak_rss_mib"] / base["peak_rss_mib"]:.2f}x | '
          f'{base["images_per_second"] / row["images_per_second"]:.2f}x |')
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as f:
      json.dump({'cpu': cpu_name(), 'repeats': args.repeats, 'steps': args.steps,
                 'rows': rows}, f, indent=1)


if __name__ == '__main__':
  main()
