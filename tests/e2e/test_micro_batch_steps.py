"""--micro_batch_size: a step in K chunks of c images equals the official --global_bn=false step on
K replicas of c images (MirroredStrategy, computed independently); one chunk is the plain step.
The comparison itself is tests/chunk_steps.py, K = 2 on the test process' two logical CPUs. K > 2
is the chunks-on-two-replicas test's: 4 chunks on one device against 2 replicas of 2 chunks (a
fault that only K > 2 has makes them differ; one every K has, the K = 2 test finds).
"""

import numpy as np
import pytest
import tensorflow as tf

from chunk_steps import (assert_chunks_equal_replicas, assert_state_close, assert_steps_close,
                         make_batches, make_config, make_task, replica_steps,
                         single_device_steps)
from simclr_tf2.errors import ConfigError


@pytest.mark.parametrize('train_mode', ['pretrain', 'finetune'])
def test_two_chunks_equal_two_replicas_without_global_bn(two_replica_strategy, train_mode):
  assert_chunks_equal_replicas(two_replica_strategy, train_mode)


def test_chunks_on_two_replicas_equal_as_many_chunks_on_one_device(two_replica_strategy):
  """2 replicas x 2 chunks and 1 device x 4 chunks are both the 4-replica step: chunking works
  under MirroredStrategy (negatives gathered across replicas, per-replica moving statistics)."""
  config = make_config(micro_batch_size=2)
  batches = make_batches(config, steps=2)
  with two_replica_strategy.scope():
    distributed = make_task(config, two_replica_strategy)
  one_device = make_task(config, weights=distributed.model.get_weights())
  expected = single_device_steps(one_device, batches)
  actual = replica_steps(distributed, two_replica_strategy, batches)
  assert_steps_close(actual, expected, one_device.model.trainable_variables)
  assert_state_close(distributed.model, one_device.model)


@pytest.fixture
def no_graph_rewrites():
  """Grappler fuses the optimizer's update arithmetic differently next to a loop (one float32
  ulp in a few weights, gradients identical): compare the graphs as written."""
  previous = tf.config.optimizer.get_experimental_options()
  tf.config.optimizer.set_experimental_options(
      {'remapping': False, 'arithmetic_optimization': False, 'constant_folding': False})
  yield
  tf.config.optimizer.set_experimental_options(previous)


# The default pretraining step, and the other path of each setting at once: the supervised loss
# alone, loss scaling and a Keras optimizer.
@pytest.mark.parametrize('overrides', [
    {}, {'train_mode': 'finetune', 'precision': 'mixed_float16', 'optimizer': 'momentum'}])
def test_one_chunk_is_the_plain_step_bit_for_bit(overrides, no_graph_rewrites):
  config = make_config(**overrides)
  batches = make_batches(config)
  plain = make_task(config)
  one_chunk = make_task(config.replace(micro_batch_size=config.train_batch_size),
                    weights=plain.model.get_weights())
  expected = single_device_steps(plain, batches)
  actual = single_device_steps(one_chunk, batches)
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
    make_config(micro_batch_size=value, train_batch_size=batch, global_bn=global_bn)
  assert '\n' not in str(error.value)


def test_micro_batches_are_not_xla_compiled():
  with pytest.raises(ConfigError, match='does not work with --jit_compile=true') as error:
    make_config(micro_batch_size=4, jit_compile=True)
  assert '\n' not in str(error.value)
