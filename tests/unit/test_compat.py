"""The TensorFlow / Keras internals simclr_tf2.compat relies on still behave as it assumes. A
failure here after an upgrade names the function to rewrite."""

import pytest
import tensorflow as tf
import tf_keras as keras

from simclr_tf2 import compat
from simclr_tf2.training.lars import LARSOptimizer


def test_set_layer_name_keeps_the_name_exactly():
  layer = keras.layers.Dense(3, name='dense')
  compat.set_layer_name(layer, 'linear_layer')
  assert layer.name == 'linear_layer'
  layer(tf.zeros([1, 2]))  # variables are named in the layer's name scope
  assert layer.kernel.name == 'linear_layer/kernel:0'


def test_keras_tracking_attributes_of_a_loaded_model_are_recognised(tmp_path):
  model = keras.Sequential([keras.layers.Dense(2)])
  model.build([None, 3])
  module = tf.Module()
  module.model = model
  tf.saved_model.save(module, str(tmp_path))
  loaded = tf.saved_model.load(str(tmp_path)).model
  bookkeeping = [name for name in vars(loaded) if compat.is_keras_tracking_attribute(name)]
  assert bookkeeping, 'Keras no longer marks its tracking children with `_self_`'
  assert not compat.is_keras_tracking_attribute('resnet_model')


def test_capture_named_names_the_capture():
  variable = tf.Variable(1.)

  @tf.function
  def read():
    graph = tf.compat.v1.get_default_graph()
    captured = compat.capture_named(graph, variable.handle, 'variable_0')
    assert 'variable_0' in captured.name
    return variable + 0.

  assert float(read()) == 1.


def test_mean_count_counts_updates():
  mean = keras.metrics.Mean()
  assert compat.mean_count(mean) == 0
  mean.update_state(2.)
  mean.update_state([4., 6.])
  assert compat.mean_count(mean) == 3


@pytest.mark.parametrize('optimizer', [
    LARSOptimizer(0.1), keras.optimizers.legacy.SGD(0.1, momentum=0.9),
    keras.optimizers.SGD(0.1, momentum=0.9)], ids=['lars', 'legacy_sgd', 'sgd'])
def test_optimizer_variables_created_ahead_are_all_the_first_step_needs(optimizer):
  used, unused = tf.Variable([1., 2.]), tf.Variable([3.])
  compat.create_optimizer_variables(optimizer, [used, unused], [used])
  created = []

  def record(next_creator, **kwargs):
    created.append(kwargs.get('name'))
    return next_creator(**kwargs)

  @tf.function
  def step():
    optimizer.apply_gradients([(tf.ones([2]), used), (None, unused)])

  with tf.variable_creator_scope(record):
    step()
  assert created == [], 'the first step created optimizer variables: a second trace per run'
  assert used.numpy().tolist() != [1., 2.] and unused.numpy().tolist() == [3.]
