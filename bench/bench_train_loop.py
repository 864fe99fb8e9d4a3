"""Training throughput of simclr_tf2's in-graph loop vs a one-call-per-step baseline.

    python bench/bench_train_loop.py [--resnet_depth=18] [--image_size=32] [--batch=64]
        [--steps=20] [--repeats=3]

Both run the same public Trainer (digits data, pretraining, LARS) in one process, interleaved
`repeats` times so machine noise hits both alike; prints images/s per repeat, the median ratio
and the process's peak resident memory. Nothing is asserted: read the ratio.
"""

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from simclr_tf2.config import Config  # noqa: E402
from simclr_tf2.data import get_source  # noqa: E402
from simclr_tf2.training.task import SimCLRTask  # noqa: E402
from simclr_tf2.data import distributed_dataset  # noqa: E402
from simclr_tf2.training.trainer import Trainer


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--resnet_depth', type=int, default=18)
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()

  config = Config(dataset='digits', use_tpu=False, resnet_depth=args.resnet_depth,
                  image_size=args.image_size, train_batch_size=args.batch, use_blur=False,
                  train_steps=10 ** 6, checkpoint_steps=args.steps, seed=0, cache_dataset=True,
                  model_dir=tempfile.mkdtemp(prefix='simclr_bench_'))
  strategy = tf.distribute.get_strategy()
  source = get_source(config.dataset, image_size=config.image_size)
  task = SimCLRTask(config, source.num_classes, strategy)
  optimizer = task.build_optimizer(source.num_examples(config.train_split))
  trainer = Trainer(task, config.model_dir, callbacks=[])
  iterator = iter(distributed_dataset(config, source, strategy, is_training=True))

  def in_graph_loop():
    trainer.train_blocks(iterator, args.steps)

  def one_call_per_step():  # baseline: Python drives every step
    for _ in range(args.steps):
      trainer.train_blocks(iterator, 1)

  for warm_up in (in_graph_loop, one_call_per_step):
    warm_up()  # tracing and the data pipeline's start-up are not measured
  rates = {in_graph_loop.__name__: [], one_call_per_step.__name__: []}
  for _ in range(args.repeats):
    for variant in (in_graph_loop, one_call_per_step):
      start = time.perf_counter()
      variant()
      float(optimizer.iterations.numpy())  # wait for the device
      rates[variant.__name__].append(args.steps * args.batch / (time.perf_counter() - start))

  print(f'ResNet-{args.resnet_depth}, {args.image_size} px, batch {args.batch} (2 views), '
        f'{args.steps} steps x {args.repeats} repeats, {os.cpu_count()} CPUs')
  for name, values in rates.items():
    print(f'  {name:20s} images/s: ' + ', '.join(f'{v:.1f}' for v in values) +
          f'  (median {statistics.median(values):.1f})')
  ratio = statistics.median(rates['in_graph_loop']) / statistics.median(rates['one_call_per_step'])
  print(f'  ratio in_graph_loop / one_call_per_step: {ratio:.3f}')
  peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f'  peak resident memory: {peak_mib:.0f} MiB')


if __name__ == '__main__':
  main()
