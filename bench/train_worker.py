"""One training-speed measurement in a fresh process (run by bench/bench.py; prints one JSON line).

    python bench/train_worker.py '{"code": DIR, "resnet_depth": 18, "image_size": 32,
                                   "batch": 128, "precision": "float32", "jit": false,
                                   "steps": 3, "blocks": 3, "profile": false}'

`code` is the source tree to import simclr_tf2 from: this checkout, or the baseline commit
extracted by bench.py. Each tree trains through its public API (see build): `blocks` + 1 blocks
of `steps` steps, with a checkpoint, summaries and a progress line after each block.

Figures: warm-up seconds (construction, tracing and the first block), images/s of each further
block (timed from one block's progress line to the next), peak resident memory, and the loss of
one fixed batch from the same initial weights (to check that two code trees compute the same
numbers). With `profile` (this checkout only), the step time is split into input, forward and
forward+backward.
"""

import json
import logging
import os
import resource
import sys
import tempfile
import time

ARGS = json.loads(sys.argv[1])
sys.path.insert(0, ARGS['code'])
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from simclr_tf2 import config as config_lib  # noqa: E402
from simclr_tf2.data import get_source  # noqa: E402

_BASELINE_TRAIN = os.path.join(ARGS['code'], 'simclr_tf2', 'train.py')
# The baseline commit trains through its `Experiment` class; later trees through SimCLRTask and
# Trainer (today in simclr_tf2/training/).
with open(_BASELINE_TRAIN if os.path.exists(_BASELINE_TRAIN) else os.devnull, encoding='utf-8') as f:
  NEW_API = 'class Experiment' not in f.read()


class BlockTimes(logging.Handler):
  """When each block ended: both code trees log one progress line ('... images/s ...') after
  every block of `checkpoint_steps` steps, once its checkpoint and summaries are written."""

  def __init__(self):
    super().__init__(logging.INFO)
    self.times = []

  def emit(self, record):
    if 'images/s' in record.getMessage():
      self.times.append(time.perf_counter())


def build(config):
  """(model, train): the code tree's model before training and its public training call.

  Both trees are driven through what they offer users: the baseline's `Experiment.train()`,
  this checkout's `Trainer.fit()` with its default callbacks (the same work per block:
  checkpoint, summaries, progress line).
  """
  strategy = tf.distribute.get_strategy()
  if NEW_API:
    from simclr_tf2.training.task import SimCLRTask  # pylint: disable=import-outside-toplevel
    from simclr_tf2.data import distributed_dataset  # pylint: disable=import-outside-toplevel
    from simclr_tf2.training.trainer import Trainer  # pylint: disable=import-outside-toplevel
    source = get_source(config.dataset, image_size=config.image_size)
    num_examples = source.num_examples(config.train_split)
    task = SimCLRTask(config, source.num_classes, strategy)
    task.build_optimizer(num_examples)
    trainer = Trainer(task, config.model_dir)
    dataset = distributed_dataset(config, source, strategy, is_training=True)
    return task.model, lambda: trainer.fit(dataset, config.train_steps,
                                           config.steps_per_loop(num_examples))
  from simclr_tf2.train import Experiment  # pylint: disable=import-outside-toplevel
  experiment = Experiment(config, strategy)
  return experiment.model, experiment.train


def input_only(config):
  """images/s of the input pipeline alone (decode, two augmented views, batching)."""
  from simclr_tf2.data import build_distributed_dataset  # pylint: disable=import-outside-toplevel
  source = get_source(config.dataset, data_dir=config.data_dir, image_size=config.image_size)
  dataset = build_distributed_dataset(
      source, config.train_batch_size, True, tf.distribute.get_strategy(),
      split=config.train_split, train_mode='pretrain', image_size=config.image_size,
      color_jitter_strength=1.0, cache_dataset=config.cache_dataset, seed=0)
  iterator = iter(dataset)
  for _ in range(3):  # start-up, autotuning
    next(iterator)
  rates = []
  for _ in range(ARGS['blocks']):
    begin = time.perf_counter()
    for _ in range(ARGS['steps']):
      tf.nest.map_structure(lambda t: t.numpy(), next(iterator))
    rates.append(ARGS['steps'] * config.train_batch_size / (time.perf_counter() - begin))
  return {'images_per_s': rates}


TFDS_BENCH_DATASET = 'simclr_bench_images'


def prepare_tfds_dataset(data_dir, count=5000, size=32):
  """A TFDS dataset prepared offline in data_dir: `count` random size x size PNG-encoded images
  with 10 labels (TFDS' own builder, writer and reader, like a prepared CIFAR-10)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  class SimclrBenchImages(tfds.core.GeneratorBasedBuilder):  # registered by name on definition
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(size, size, 3)),
          'label': tfds.features.ClassLabel(num_classes=10)}), supervised_keys=('image', 'label'))

    def _split_generators(self, dl_manager):
      del dl_manager  # nothing to download
      return {'train': self._generate_examples()}

    def _generate_examples(self):
      rng = np.random.default_rng(0)
      for index in range(count):
        yield index, {'image': rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                      'label': index % 10}

  SimclrBenchImages(data_dir=data_dir).download_and_prepare()


def main():
  if ARGS.get('input_only'):
    if ARGS.get('dataset') == TFDS_BENCH_DATASET:
      prepare_tfds_dataset(ARGS['data_dir'])
    config = config_lib.Config(dataset=ARGS.get('dataset', 'digits'), data_dir=ARGS.get('data_dir'),
                               image_size=ARGS['image_size'], train_batch_size=ARGS['batch'],
                               cache_dataset=ARGS.get('dataset', 'digits') == 'digits',
                               lineareval_while_pretraining=False, use_tpu=False)
    result = input_only(config)
    result['peak_rss_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))
    return
  overrides = {'precision': ARGS['precision'], 'jit_compile': ARGS['jit']} if NEW_API else {}
  config = config_lib.Config(
      dataset='digits', use_tpu=False, resnet_depth=ARGS['resnet_depth'],
      image_size=ARGS['image_size'], train_batch_size=ARGS['batch'], use_blur=True,
      train_steps=ARGS['steps'] * (ARGS['blocks'] + 1), checkpoint_steps=ARGS['steps'], seed=0,
      cache_dataset=True, keep_checkpoint_max=1,
      model_dir=tempfile.mkdtemp(prefix='simclr_bench_'), **overrides)
  keras.utils.set_random_seed(0)  # same initial weights in both code trees
  block_times = BlockTimes()
  logging.getLogger().addHandler(block_times)
  logging.getLogger().setLevel(logging.INFO)
  start = time.perf_counter()
  model, train = build(config)
  initial_weights = [np.array(w) for w in model.get_weights()]
  train()
  ends = [start] + block_times.times
  rates = [ARGS['steps'] * ARGS['batch'] / (end - begin) for begin, end in zip(ends[1:], ends[2:])]
  result = {'warm_up_s': ends[1] - start, 'images_per_s': rates,
            'loss_fixed_batch': fixed_batch_loss(model, config, initial_weights)}
  if ARGS.get('profile'):
    result['profile_ms'] = profile(model, config)
  result['peak_rss_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(json.dumps(result))


def fixed_batch_loss(model, config, initial_weights):
  """NT-Xent + weight decay of one fixed batch from the initial weights (training-mode BN)."""
  from simclr_tf2.training.objective import contrastive_loss  # pylint: disable=import-outside-toplevel
  model.set_weights(initial_weights)
  rng = np.random.default_rng(0)
  images = tf.constant(rng.uniform(size=[8, config.image_size, config.image_size, 6]),
                       tf.float32)
  projection, _ = model(images, training=True, blur=False)
  loss, _, _ = contrastive_loss(tf.cast(projection, tf.float32), hidden_norm=True,
                                temperature=config.temperature)
  return float(loss)


def profile(model, config):
  """Median milliseconds per step of: input only, forward, forward + backward."""
  from simclr_tf2.data import distributed_dataset  # pylint: disable=import-outside-toplevel
  strategy = tf.distribute.get_strategy()
  iterator = iter(distributed_dataset(
      config, get_source(config.dataset, image_size=config.image_size), strategy, True))
  images, _ = next(iterator)

  @tf.function
  def forward(images):
    return model(images, training=True)[0]

  @tf.function
  def forward_backward(images):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.cast(model(images, training=True)[0], tf.float32))
    return tape.gradient(loss, model.trainable_variables)

  def timed(function, repeats=3):
    function()  # trace
    times = []
    for _ in range(repeats):
      begin = time.perf_counter()
      function()
      times.append((time.perf_counter() - begin) * 1000)
    return float(np.median(times))

  def materialise(value):
    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, 'numpy') else t, value)

  return {'input': timed(lambda: materialise(next(iterator))),
          'forward': timed(lambda: materialise(forward(images))),
          'forward_backward': timed(lambda: materialise(forward_backward(images)))}


if __name__ == '__main__':
  main()
