"""Steps of a chunked task beside the --global_bn=false reference on K replicas: shared by
tests/e2e/test_micro_batch_steps.py and the K-device comparison it runs in a subprocess (logical
devices are fixed when TensorFlow starts, and the test process has two).

Gradients are those SimCLRTask.train_step applied (it returns them); the K-replica reference
sums its replicas' gradients as apply_gradients does. "Within 1e-5 relative" is per variable:
||chunked - reference|| <= 1e-5 ||reference||.
"""

import numpy as np
import tensorflow as tf
import tf_keras as keras

from simclr_tf2.config import Config
from simclr_tf2.training.task import SimCLRTask

RTOL = 1e-5
SIZE = 16
NUM_CLASSES = 10


def make_config(**overrides):
  values = dict(resnet_depth=18, image_size=SIZE, width_multiplier=1, proj_out_dim=16,
                train_batch_size=8, use_tpu=False, seed=7, global_bn=False, learning_rate=0.5,
                weight_decay=1e-4)
  values.update(overrides)
  return Config(**values)


def make_batches(config, steps=3):
  channels = 6 if config.train_mode == 'pretrain' else 3
  rng = np.random.default_rng(1)
  return [(tf.constant(rng.uniform(size=[config.train_batch_size, SIZE, SIZE, channels]),
                       tf.float32),
           tf.one_hot(rng.integers(0, NUM_CLASSES, config.train_batch_size), NUM_CLASSES))
          for _ in range(steps)]


def make_task(config, strategy=None, weights=None):
  keras.utils.set_random_seed(0)
  task = SimCLRTask(config, NUM_CLASSES, strategy)
  task.build_optimizer(num_train_examples=1000)
  if weights is not None:
    task.model.set_weights(weights)
  return task


def step_function(task):
  """A tf.function of (images, labels): one train_step, returning the gradients it applied and
  its values."""

  @tf.function
  def run(images, labels):
    gradients, values = task.train_step(images, labels)
    return gradients, {k: v for k, v in values._asdict().items() if v is not None}
  return run


def single_device_steps(task, batches):
  """(gradients, values) of each step on the default strategy."""
  step = step_function(task)
  results = []
  for images, labels in batches:
    gradients, values = step(images, labels)
    results.append(([None if g is None else g.numpy() for g in gradients],
                    {k: v.numpy() for k, v in values.items()}))
  return results


def replica_steps(task, strategy, batches):
  """The same on a MirroredStrategy: per-replica slices, gradients summed over replicas (as
  apply_gradients sums them), the total loss averaged (as the metric reads it)."""
  replicas = strategy.num_replicas_in_sync
  step = step_function(task)

  @tf.function
  def distributed(images, labels):
    return strategy.run(step, (images, labels))

  results = []
  for images, labels in batches:
    per = images.shape[0] // replicas

    def split(tensor):
      return strategy.experimental_distribute_values_from_function(
          lambda ctx, t=tensor: t[ctx.replica_id_in_sync_group * per:
                                  (ctx.replica_id_in_sync_group + 1) * per])

    gradients, values = distributed(split(images), split(labels))
    summed = [None if g is None else
              sum(t.numpy() for t in strategy.experimental_local_results(g)) for g in gradients]
    total = np.mean([t.numpy() for t in strategy.experimental_local_results(
        values['total_loss'])])
    results.append((summed, {'total_loss': total}))
  return results


def relative_error(actual, expected):
  return np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30)


def assert_steps_close(actual, expected, variables):
  """Per step: the total loss, and every gradient within RTOL (None where the reference's is)."""
  for (gradients, values), (expected_gradients, expected_values) in zip(actual, expected):
    np.testing.assert_allclose(values['total_loss'], expected_values['total_loss'], rtol=RTOL)
    for g, e, v in zip(gradients, expected_gradients, variables):
      assert (g is None) == (e is None), v.name
      if g is not None:
        assert relative_error(g, e) <= RTOL, (v.name, relative_error(g, e))


def assert_state_close(actual_model, expected_model):
  """Every weight and moving statistic (a MirroredStrategy reads ON_READ ones as the mean)."""
  for actual, expected in zip(actual_model.variables, expected_model.variables):
    assert actual.shape == expected.shape, (actual.name, expected.name)
    error = relative_error(actual.numpy(), expected.numpy())
    assert error <= RTOL, (actual.name, error)


def assert_chunks_equal_replicas(strategy, train_mode='pretrain'):
  """K = strategy's replicas chunks of 8 / K images on one device equal the --global_bn=false
  step on those K replicas of 8 / K images: losses and gradients of 3 steps, then every weight
  and moving statistic."""
  config = make_config(train_mode=train_mode)
  batches = make_batches(config)
  with strategy.scope():
    reference = make_task(config, strategy)
  chunk = config.train_batch_size // strategy.num_replicas_in_sync
  chunked = make_task(config.replace(micro_batch_size=chunk),
                      weights=reference.model.get_weights())
  expected = replica_steps(reference, strategy, batches)
  actual = single_device_steps(chunked, batches)
  assert_steps_close(actual, expected, chunked.model.trainable_variables)
  assert_state_close(chunked.model, reference.model)
  assert int(chunked.global_step) == 3
