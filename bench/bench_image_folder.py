"""Start-up time and throughput of an image folder: from listing the files to training batches.

    python bench/bench_image_folder.py [--num_images=100000] [--folder=DIR] [--batch=256]
        [--batches=300] [--repeats=3] [--strict]

Makes `num_images` random 32x32 images (half PNG, half JPEG, 10 class folders) under `--folder`
once (timed; a later run with the same folder and count reuses them), then `repeats` times, each
with a fresh source: seconds from constructing the source to the first training batch (the
pretraining pipeline of `simclr_tf2.data.distributed_dataset`: shuffle, decode, two augmented
views), training-pipeline images/s over `batches` batches, and the source's own read+decode
images/s (over 20,000 images). Prints each repeat, the medians and the machine. Nothing is asserted.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from simclr_tf2.config import Config  # noqa: E402
from simclr_tf2.data import get_source  # noqa: E402
from simclr_tf2.data import distributed_dataset  # noqa: E402

NUM_CLASSES = 10
SIZE = 32
DECODE_IMAGES = 20_000  # read+decode throughput is measured over this many images


def make_images(folder, num_images):
  """`num_images` random images in folder/train/<class>/; reused if already complete."""
  done = os.path.join(folder, f'complete_{num_images}')
  if os.path.exists(done):
    return None
  rng = np.random.default_rng(0)
  start = time.perf_counter()
  for index in range(num_images):
    class_dir = os.path.join(folder, 'train', f'class_{index % NUM_CLASSES}')
    os.makedirs(class_dir, exist_ok=True)
    # Smooth random images (a few coloured gradients), so JPEG/PNG sizes are realistic-ish.
    pixels = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).resize((SIZE, SIZE), Image.BILINEAR)
    image.save(os.path.join(class_dir, f'{index:06d}.{"png" if index % 2 else "jpg"}'))
  open(done, 'w').close()
  return time.perf_counter() - start


def measure(folder, batch, batches, skip_corrupt_images):
  config = Config(dataset='image_folder', data_dir=folder, image_size=SIZE,
                  train_batch_size=batch, use_tpu=False, seed=0,
                  skip_corrupt_images=skip_corrupt_images)
  strategy = tf.distribute.get_strategy()
  start = time.perf_counter()
  source = get_source(config.dataset, config.data_dir, config.skip_corrupt_images)
  listed = time.perf_counter() - start
  iterator = iter(distributed_dataset(config, source, strategy, is_training=True))
  next(iterator)[0].numpy()
  first_batch = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(batches):
    images = next(iterator)[0]
  images.numpy()
  pipeline = batches * batch / (time.perf_counter() - start)
  decoded = source.as_dataset('train', shuffle_files=True, seed=0).take(DECODE_IMAGES)
  start = time.perf_counter()
  count = decoded.reduce(0, lambda count, _: count + 1).numpy()
  decode = count / (time.perf_counter() - start)
  return listed, first_batch, pipeline, decode


def cpu_model():
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as cpuinfo:
      for line in cpuinfo:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return 'unknown'


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--num_images', type=int, default=100_000)
  parser.add_argument('--folder', default=None,
                      help='where the images are made (default: a folder in the temp directory '
                           'named after num_images, reused by later runs)')
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--batches', type=int, default=300)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--strict', action='store_true',
                      help='skip_corrupt_images=False (each file checked on its own)')
  args = parser.parse_args()
  folder = args.folder or os.path.join(tempfile.gettempdir(),
                                       f'simclr_bench_image_folder_{args.num_images}')
  generation = make_images(folder, args.num_images)
  print(f'machine: {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), {cpu_model()}; '
        f'TensorFlow {tf.__version__}')
  print(f'{args.num_images} images of {SIZE}x{SIZE} (PNG/JPEG, {NUM_CLASSES} classes) in {folder}: '
        + (f'made in {generation:.1f} s' if generation is not None else 'reused'))
  print(f'pretraining pipeline, batch {args.batch}, {args.batches} batches per repeat, '
        f'skip_corrupt_images={not args.strict}')
  rows = []
  for repeat in range(args.repeats):
    rows.append(measure(folder, args.batch, args.batches, not args.strict))
    listed, first_batch, pipeline, decode = rows[-1]
    print(f'  repeat {repeat + 1}: listing {listed:.2f} s, first batch after {first_batch:.2f} s, '
          f'training pipeline {pipeline:.0f} images/s, read+decode {decode:.0f} images/s')
  listed, first_batch, pipeline, decode = (statistics.median(column) for column in zip(*rows))
  print(f'median: listing {listed:.2f} s, first training batch after {first_batch:.2f} s, '
        f'training pipeline {pipeline:.0f} images/s, read+decode {decode:.0f} images/s')


if __name__ == '__main__':
  main()
