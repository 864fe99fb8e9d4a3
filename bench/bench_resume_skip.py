"""Cost of resuming a seeded input stream in the middle of an epoch (data.build_input_fn start_step).

    python bench/bench_resume_skip.py [--batch=256] [--repeats=3]

For digits (1437 examples) and a 50 000-example in-memory 32x32 dataset (with and without
--cache_dataset), prints the seconds to the first batch of an unseeded stream (the reference's
pipeline), of a seeded one from step 0, and of a seeded one resumed in the middle of the second
epoch; the difference is what the skip costs (only the examples of the current epoch before that
step are read and shuffled, never augmented). Nothing is asserted.
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from simclr_tf2 import data  # noqa: E402


class InMemorySource:
  """Random uint8 images held in memory, like a decoded CIFAR-10 training split."""

  num_classes = 10

  def __init__(self, num_examples, size=32):
    rng = np.random.default_rng(0)
    self.images = rng.integers(0, 256, (num_examples, size, size, 3), dtype=np.uint8)
    self.labels = rng.integers(0, 10, num_examples).astype(np.int64)

  def num_examples(self, split):
    del split
    return len(self.labels)

  def as_dataset(self, split, shuffle_files, input_context=None, seed=None):
    del split
    dataset = tf.data.Dataset.from_tensor_slices((self.images, self.labels))
    return dataset.shuffle(len(self.labels), seed=seed) if shuffle_files else dataset


def seconds_to_first_batch(source, batch, start_step, image_size, cache_dataset, seed=0):
  input_fn = data.build_input_fn(source, batch, True, split='train', train_mode='pretrain',
                                 image_size=image_size, color_jitter_strength=1.0,
                                 cache_dataset=cache_dataset, seed=seed, start_step=start_step)
  begin = time.perf_counter()
  next(iter(input_fn(tf.distribute.InputContext())))
  return time.perf_counter() - begin


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  digits, in_memory = data.get_source('digits', image_size=8), InMemorySource(50_000)
  for name, source, image_size, cache in (('digits', digits, 8, False),
                                          ('digits cached', digits, 8, True),
                                          ('50k cached', in_memory, 32, True),
                                          ('50k', in_memory, 32, False)):
    epoch_steps = source.num_examples('train') // args.batch
    middle = epoch_steps + epoch_steps // 2  # middle of the second epoch
    for seed, start_step in ((None, 0), (0, 0), (0, middle)):
      times = [seconds_to_first_batch(source, args.batch, start_step, image_size, cache, seed)
               for _ in range(args.repeats)]
      skipped = start_step * args.batch % source.num_examples('train')
      print(f'{name:14s} seed {seed!s:4s} start_step {start_step:4d} (skips {skipped:6d} '
            f'examples): first batch after {statistics.median(times):.2f} s (median of '
            f'{args.repeats})', flush=True)


if __name__ == '__main__':
  main()
