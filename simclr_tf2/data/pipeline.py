"""The distributed tf.data input pipeline of a source (K35: docs/differences.md).

`distributed_dataset(config, source, strategy, is_training)` (or the lower-level
`build_input_fn` / `build_distributed_dataset`) turns a source into per-replica batches of
augmented views: [b, s, s, 6] (two views) for pretraining, [b, s, s, 3] otherwise, with one-hot
labels. Seeded streams are a function of (seed, position), so a resumed run continues exactly.
"""

import logging
import random
from typing import Optional

import tensorflow as tf

from simclr_tf2.architecture import CIFAR_MAX_IMAGE_SIZE
from simclr_tf2.config import CROP_MIN_AREA, TRAIN_MODES, Config, check_range
from simclr_tf2.data import augment
from simclr_tf2.data.sources import TfdsSource

logger = logging.getLogger(__name__)

def _pipeline_seed(base_seed, input_context, stream):
  """A stateless [2] seed of this input pipeline for one random stream (0: augmentation, 1: order)."""
  pipeline_id = input_context.input_pipeline_id if input_context else 0
  return tf.random.experimental.stateless_fold_in(
      tf.constant([base_seed, stream], tf.int64), pipeline_id)


def _element_seeds(base_seed, input_context, start=0):
  """An infinite dataset of distinct stateless seeds for this input pipeline's examples.

  The seed of an example depends only on its position in the pipeline's stream, so a stream
  resumed at position `start` gets the same seeds as the uninterrupted one.
  """
  pipeline_seed = _pipeline_seed(base_seed, input_context, 0)
  return tf.data.Dataset.counter(start).map(
      lambda index: tf.random.experimental.stateless_fold_in(pipeline_seed, index))


def _epoch_size(source, split, input_context):
  """Examples per epoch of this input pipeline (its shard of the split)."""
  cardinality = tf.get_static_value(source.as_dataset(
      split, shuffle_files=False, input_context=input_context).cardinality())
  if cardinality is not None and cardinality >= 0:
    return int(cardinality)
  if not input_context or input_context.num_input_pipelines == 1:
    return source.num_examples(split)
  return None


def _seeded_training_examples(source, split, input_context, seed, buffer_size, cache_dataset,
                              start):
  """The shuffled, repeated examples of a seeded run from stream position `start`, cheaply.

  Epoch e is the split read in an order drawn from (seed, pipeline, e) alone (the source's file /
  example shuffle, then the shuffle buffer), so a resumed stream starts at epoch
  start // epoch_size and skips only the examples of that epoch already used.
  """
  order_seed = _pipeline_seed(seed, input_context, 1)
  # TFDS takes its file-shuffle seed as a Python int: its file order is the same every epoch.
  tensor_seeds = not isinstance(source, TfdsSource)

  def epoch_seed(epoch):
    # Called in the flat_map function: with a global seed of 0, TF's seed logic would test the
    # tensor seed as a Python bool; this function's graph-level seed is not used otherwise.
    tf.compat.v1.get_default_graph().seed = None
    return tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(
        order_seed, epoch), minval=None, maxval=None, dtype=tf.int64)

  epoch_size = _epoch_size(source, split, input_context)
  if cache_dataset:  # decode once; each epoch is a full shuffle of the cached split
    cached = source.as_dataset(split, shuffle_files=False, input_context=input_context).cache()

    def epoch_examples(epoch):
      return cached.shuffle(epoch_size or buffer_size, seed=epoch_seed(epoch))
  else:
    def epoch_examples(epoch):
      shuffle_seed = epoch_seed(epoch)
      examples = source.as_dataset(split, shuffle_files=True, input_context=input_context,
                                   seed=shuffle_seed if tensor_seeds else seed)
      return examples.shuffle(buffer_size, seed=shuffle_seed)

  if epoch_size is None:  # unknown shard size: correct but slow
    logger.warning('Unknown epoch size of the input shard: resuming skips %d examples.', start)
    first_epoch, skip = 0, start
  else:
    first_epoch, skip = divmod(start, epoch_size)
  return tf.data.Dataset.range(first_epoch, tf.int64.max).flat_map(epoch_examples).skip(skip)


def build_input_fn(source, global_batch_size, is_training, *, split, train_mode, image_size,
                   color_jitter_strength, cache_dataset, seed=None, start_step=0, slack=False,
                   crop_min_area=CROP_MIN_AREA, horizontal_flip=True, train_steps=None):
  """Returns `input_fn(input_context)` building one input pipeline.

  `slack` (training only): tf.data's slack in the final prefetch, which eases CPU contention
  with a TPU host's step. The reference sets it under every strategy; build_distributed_dataset
  sets it for TPUs only: under MirroredStrategy TensorFlow's multi-device iterator wraps the
  pipeline in an options dataset after the final prefetch, tf.data then cannot find that
  prefetch and logs a warning about it at every start.

  Training repeats forever and drops the remainder; evaluation reads the split once and keeps the
  last partial batch. `seed` (int) makes shuffling and augmentation reproducible (K35); None is
  the reference behaviour (unseeded, non-deterministic order). With a seed, the training stream
  is a function of (seed, position): `start_step` (the global step a run resumes from) starts it
  where an uninterrupted run would be after that many steps, for the same number of input
  pipelines and global batch size. Unseeded streams always start afresh.

  `train_steps` (training only; None: forever): the step the run stops at. The stream then ends
  with the last batch a step from `start_step` to `train_steps` takes (the same batches): nothing
  is left in flight when training ends, whose teardown otherwise waits for the work of batches
  nobody takes (seconds, and tens of seconds when the machine's disk is busy).
  """
  if train_mode not in TRAIN_MODES:
    raise ValueError(f'train_mode={train_mode!r} must be one of {", ".join(TRAIN_MODES)}')
  check_range('color_jitter_strength', color_jitter_strength)
  check_range('crop_min_area', crop_min_area)
  if start_step < 0:
    raise ValueError(f'start_step={start_step} must be >= 0')
  two_views = is_training and train_mode == 'pretrain'  # distill augments as finetune does
  test_crop = image_size > CIFAR_MAX_IMAGE_SIZE
  num_classes = source.num_classes

  def view(image, strength, view_seed):
    return augment.preprocess_image(image, image_size, image_size, is_training, strength,
                                    test_crop=test_crop, seed=view_seed,
                                    crop_min_area=crop_min_area, horizontal_flip=horizontal_flip)

  def map_fn(example, element_seed):
    image, label = example
    if two_views:
      first, second = tf.unstack(tf.random.experimental.stateless_split(element_seed, 2))
      image = tf.concat([view(image, color_jitter_strength, first),
                         view(image, color_jitter_strength, second)], axis=-1)
    else:
      image = view(image, 0., element_seed)
    return image, tf.one_hot(label, num_classes, dtype=tf.float32)

  def input_fn(input_context):
    per_replica_batch_size = input_context.get_per_replica_batch_size(global_batch_size)
    logger.info('%s input: global batch %d, per-replica batch %d, %d input pipeline(s)',
                'training' if is_training else 'eval', global_batch_size,
                per_replica_batch_size, input_context.num_input_pipelines)
    buffer_multiplier = 50 if image_size <= CIFAR_MAX_IMAGE_SIZE else 10
    # Examples this pipeline fed before `start_step`: each step takes one per-replica batch for
    # each of the replicas it feeds.
    start = start_step * global_batch_size // input_context.num_input_pipelines
    if is_training and seed is not None:
      dataset = _seeded_training_examples(
          source, split, input_context, seed, per_replica_batch_size * buffer_multiplier,
          cache_dataset, start)
    else:
      start = 0
      dataset = source.as_dataset(split, shuffle_files=is_training, input_context=input_context,
                                  seed=seed)
      if cache_dataset:
        dataset = dataset.cache()
      if is_training:
        dataset = dataset.shuffle(per_replica_batch_size * buffer_multiplier).repeat()
    if is_training:
      options = tf.data.Options()
      options.deterministic = seed is not None
      options.experimental_slack = slack
      dataset = dataset.with_options(options)
    # Seeds are tied to an example's position, not to the (possibly parallel) map call order.
    base_seed = random.SystemRandom().randrange(2**31) if seed is None else seed
    dataset = tf.data.Dataset.zip((dataset, _element_seeds(base_seed, input_context, start)))
    if is_training and train_steps is not None:
      # Each step takes one per-replica batch from this pipeline for each replica it feeds.
      replicas_fed = input_context.num_replicas_in_sync // input_context.num_input_pipelines
      dataset = dataset.take(
          max(train_steps - start_step, 0) * replicas_fed * per_replica_batch_size)
    dataset = dataset.map(map_fn, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(per_replica_batch_size, drop_remainder=is_training)
    return dataset.prefetch(tf.data.AUTOTUNE)

  return input_fn


def build_distributed_dataset(source, global_batch_size, is_training, strategy, **kwargs):
  """`strategy.distribute_datasets_from_function` over `build_input_fn(...)`; same keywords."""
  replicas = strategy.num_replicas_in_sync
  if global_batch_size % replicas:
    raise ValueError(f'global batch size {global_batch_size} is not divisible by the '
                     f'{replicas} replicas; use a multiple of {replicas}')
  on_tpu = isinstance(strategy, (tf.distribute.TPUStrategy,
                                 tf.distribute.experimental.TPUStrategy))
  input_fn = build_input_fn(source, global_batch_size, is_training, slack=on_tpu, **kwargs)
  return strategy.distribute_datasets_from_function(input_fn)


def distributed_dataset(config: Config, source, strategy, is_training: bool,
                        start_step: int = 0, train_steps: Optional[int] = None):
  """The per-replica training (augmented, repeated) or evaluation pipeline of a config.

  `start_step`: the global step training resumes from; with a seed the stream then continues
  exactly where the interrupted run was. `train_steps`: where training stops, so the stream
  ends there (None: it repeats forever); see build_input_fn.
  """
  return build_distributed_dataset(
      source, config.train_batch_size if is_training else config.eval_batch_size,
      is_training, strategy,
      split=config.train_split if is_training else config.eval_split,
      train_mode=config.train_mode, image_size=config.image_size,
      color_jitter_strength=config.color_jitter_strength if is_training else 0.,
      cache_dataset=config.cache_dataset, seed=config.seed,
      start_step=start_step if is_training else 0, crop_min_area=config.crop_min_area,
      horizontal_flip=config.horizontal_flip, train_steps=train_steps if is_training else None)
