"""--micro_batch_size: a step in K chunks of c images equals the official --global_bn=false step on
K replicas of c images (MirroredStrategy, computed independently); one chunk is the plain step.

Gradients are those SimCLRTask.train_step applied (it returns them); the K-replica
reference sums its replicas' gradients as apply_gradients does. "Within 1e-5 relative" is per
variable: ||chunked - reference|| <= 1e-5 ||reference||.
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from simclr_tf2.config import Config
from simclr_tf2.errors import ConfigError
from simclr_tf2.training.task import SimCLRTask

RTOL = 1e-5
SIZE = 16
NUM_CLASSES = 10


def _config(**overrides):
  values = dict(resnet_depth=18, image_size=SIZE, width_multiplier=1, proj_out_dim=16,
                train_batch_size=8, use_tpu=False, seed=7, global_bn=False, learning_rate=0.5,
                weight_decay=1e-4)
  values.update(overrides)
  return Config(**values)


def _batches(config, steps=3):
  channels = 6 if config.train_mode == 'pretrain' else 3
  rng = np.random.default_rng(1)
  return [(tf.constant(rng.uniform(size=[config.train_batch_size, SIZE, SIZE, channels]),
                       tf.float32),
           tf.one_hot(rng.integers(0, NUM_CLASSES, config.train_batch_size), NUM_CLASSES))
          for _ in range(steps)]


def _task(config, strategy=None, weights=None):
  keras.utils.set_random_seed(0)
  task = SimCLRTask(config, NUM_CLASSES, strategy)
  task.build_optimizer(num_train_examples=1000)
  if weights is not None:
    task.model.set_weights(weights)
  return task


def _train_step(task):
  """A tf.function of (images, labels): one train_step, returning the gradients it applied and
  its values."""

  @tf.function
  def run(images, labels):
    gradients, values = task.train_step(images, labels)
    return gradients, {k: v for k, v in values._asdict().items() if v is not None}
  return run


def _single_device_steps(task, batches):
  """(gradients, values) of each step on the default strategy."""
  step = _train_step(task)
  results = []
  for images, labels in batches:
    gradients, values = step(images, labels)
    results.append(([None if g is None else g.numpy() for g in gradients],
                    {k: v.numpy() for k, v in values.items()}))
  return results


def _replica_steps(task, strategy, batches):
  """The same on a MirroredStrategy: per-replica slices, gradients summed over replicas (as
  apply_gradients sums them), the total loss averaged (as the metric reads it)."""
  replicas = strategy.num_replicas_in_sync
  step = _train_step(task)

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


def _relative_error(actual, expected):
  return np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30)


def _assert_state_close(actual_model, expected_model):
  """Every weight and moving statistic (a MirroredStrategy reads ON_READ ones as the mean)."""
  for actual, expected in zip(actual_model.variables, expected_model.variables):
    assert actual.shape == expected.shape, (actual.name, expected.name)
    error = _relative_error(actual.numpy(), expected.numpy())
    assert error <= RTOL, (actual.name, error)


@pytest.mark.parametrize('train_mode', ['pretrain', 'finetune'])
def test_two_chunks_equal_two_replicas_without_global_bn(two_replica_strategy, train_mode):
  config = _config(train_mode=train_mode)
  batches = _batches(config)
  with two_replica_strategy.scope():
    reference = _task(config, two_replica_strategy)
  weights = reference.model.get_weights()
  chunked = _task(config.replace(micro_batch_size=4), weights=weights)
  expected = _replica_steps(reference, two_replica_strategy, batches)
  actual = _single_device_steps(chunked, batches)
  for (gradients, values), (expected_gradients, expected_values) in zip(actual, expected):
    np.testing.assert_allclose(values['total_loss'], expected_values['total_loss'], rtol=RTOL)
    for g, e, v in zip(gradients, expected_gradients, chunked.model.trainable_variables):
      assert (g is None) == (e is None), v.name
      if g is not None:
        assert _relative_error(g, e) <= RTOL, (v.name, _relative_error(g, e))
  _assert_state_close(chunked.model, reference.model)
  assert int(chunked.global_step) == 3


def test_chunks_on_two_replicas_equal_as_many_chunks_on_one_device(two_replica_strategy):
  """2 replicas x 2 chunks and 1 device x 4 chunks are both the 4-replica step: chunking works
  under MirroredStrategy (negatives gathered across replicas, per-replica moving statistics)."""
  config = _config(micro_batch_size=2)
  batches = _batches(config, steps=2)
  with two_replica_strategy.scope():
    distributed = _task(config, two_replica_strategy)
  one_device = _task(config, weights=distributed.model.get_weights())
  expected = _single_device_steps(one_device, batches)
  actual = _replica_steps(distributed, two_replica_strategy, batches)
  for (gradients, values), (expected_gradients, expected_values) in zip(actual, expected):
    np.testing.assert_allclose(values['total_loss'], expected_values['total_loss'], rtol=RTOL)
    for g, e in zip(gradients, expected_gradients):
      assert (g is None) == (e is None)
      if g is not None:
        assert _relative_error(g, e) <= RTOL
  _assert_state_close(distributed.model, one_device.model)


@pytest.fixture
def no_graph_rewrites():
  """Grappler fuses the optimizer's update arithmetic differently next to a loop (one float32
  ulp in a few weights, gradients identical): compare the graphs as written."""
  previous = tf.config.optimizer.get_experimental_options()
  tf.config.optimizer.set_experimental_options(
      {'remapping': False, 'arithmetic_optimization': False, 'constant_folding': False})
  yield
  tf.config.optimizer.set_experimental_options(previous)


@pytest.mark.parametrize('overrides', [
    {}, {'train_mode': 'finetune'}, {'precision': 'mixed_float16', 'optimizer': 'momentum'}])
def test_one_chunk_is_the_plain_step_bit_for_bit(overrides, no_graph_rewrites):
  config = _config(**overrides)
  batches = _batches(config)
  plain = _task(config)
  one_chunk = _task(config.replace(micro_batch_size=config.train_batch_size),
                    weights=plain.model.get_weights())
  expected = _single_device_steps(plain, batches)
  actual = _single_device_steps(one_chunk, batches)
  for (gradients, values), (expected_gradients, expected_values) in zip(actual, expected):
    assert values.keys() == expected_values.keys()
    for key in values:
      np.testing.assert_array_equal(values[key], expected_values[key], err_msg=key)
    for g, e in zip(gradients, expected_gradients):
      assert (g is None) == (e is None)
      if g is not None:
        np.testing.assert_array_equal(g, e)
  for actual, expected in zip(one_chunk.model.variables, plain.model.variables):
    np.testing.assert_array_equal(actual.numpy(), expected.numpy(), err_msg=actual.name)


@pytest.mark.parametrize('value,batch,global_bn,message', [
    (3, 8, False, 'must divide'), (16, 8, False, 'must divide'), (-4, 8, False, 'must be >= 0'),
    (4, 8, True, 'needs --global_bn=false')])
def test_bad_micro_batch_sizes_are_one_line_config_errors(value, batch, global_bn, message):
  with pytest.raises(ConfigError, match=message) as error:
    _config(micro_batch_size=value, train_batch_size=batch, global_bn=global_bn)
  assert '\n' not in str(error.value)


def test_micro_batches_are_not_xla_compiled():
  with pytest.raises(ConfigError, match='does not work with --jit_compile=true') as error:
    _config(micro_batch_size=4, jit_compile=True)
  assert '\n' not in str(error.value)
