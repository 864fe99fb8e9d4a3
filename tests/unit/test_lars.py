"""LARS vs golden two-step vectors and a NumPy version; checkpoint layout; optimizer factory."""

import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from simclr_tf2.training import lars
from simclr_tf2.training.schedule import WarmUpAndCosineDecay

EXCLUDE = ['batch_normalization', 'bias', 'head_supervised']
CASES = ['classic=True,nesterov=False', 'classic=True,nesterov=True',
         'classic=False,nesterov=False', 'classic=False,nesterov=True']


@pytest.fixture(scope='module')
def lars_vectors(golden_dir):
  return json.loads((golden_dir / 'lars_vectors.json').read_text())


def _flags(case):
  classic, nesterov = (part.split('=')[1] == 'True' for part in case.split(','))
  return classic, nesterov


def _numpy_lars_step(w, g, v, lr, momentum, weight_decay, eeta, classic, nesterov, excluded):
  """One LARS update in float64 (trust ratio eeta*|w|/|direction|). Returns (w_new, v_new)."""
  def trust(direction):
    w_norm, d_norm = np.linalg.norm(w), np.linalg.norm(direction)
    return eeta * w_norm / d_norm if not excluded and w_norm > 0 and d_norm > 0 else 1.
  if not excluded and weight_decay:
    g = g + weight_decay * w
  if classic:
    scaled_lr = lr * trust(g)
    v_new = momentum * v + scaled_lr * g
    update = momentum * v_new + scaled_lr * g if nesterov else v_new
    return w - update, v_new
  v_new = momentum * v + g
  update = momentum * v_new + g if nesterov else v_new
  return w - lr * trust(update) * update, v_new


def _make_optimizer(vectors, classic, nesterov, learning_rate=None):
  return lars.LARSOptimizer(
      vectors['lr'] if learning_rate is None else learning_rate, momentum=vectors['momentum'],
      use_nesterov=nesterov, weight_decay=vectors['weight_decay'],
      exclude_from_weight_decay=EXCLUDE, classic_momentum=classic, eeta=vectors['eeta'])


def _golden_variables(vectors):
  # tf.Variable appends ':0', so the optimizer sees e.g. 'conv2d/kernel:0'.
  return [tf.Variable(np.array(w, np.float32), name=name)
          for w, name in zip(vectors['w0'], vectors['var_names'])]


@pytest.mark.parametrize('case', CASES)
def test_two_steps_match_golden_and_numpy(lars_vectors, case):
  vectors = lars_vectors[case]
  classic, nesterov = _flags(case)
  variables = _golden_variables(vectors)
  assert [v.name for v in variables] == ['conv2d/kernel:0', 'batch_normalization/gamma:0']
  optimizer = _make_optimizer(vectors, classic, nesterov)

  numpy_w = [np.array(w, np.float64) for w in vectors['w0']]
  numpy_v = [np.zeros_like(w) for w in numpy_w]
  for step in (1, 2):
    grads = [np.array(g, np.float32) for g in vectors[f'grad_step{step}']]
    optimizer.apply_gradients(zip([tf.constant(g) for g in grads], variables))
    for i, (variable, expected) in enumerate(zip(variables, vectors[f'after_step{step}'])):
      np.testing.assert_allclose(variable.numpy(), expected, atol=1e-6, err_msg=f'step {step}')
      numpy_w[i], numpy_v[i] = _numpy_lars_step(
          numpy_w[i], grads[i], numpy_v[i], vectors['lr'], vectors['momentum'],
          vectors['weight_decay'], vectors['eeta'], classic, nesterov,
          excluded=vectors['var_names'][i].startswith('batch_normalization'))
      np.testing.assert_allclose(variable.numpy(), numpy_w[i], atol=1e-5, err_msg=f'step {step}')
  for variable, expected in zip(variables, vectors['momentum_slot_after_step2']):
    np.testing.assert_allclose(optimizer.get_slot(variable, 'Momentum').numpy(), expected,
                               atol=1e-6)
  assert int(optimizer.iterations) == 2


def test_zero_weights_and_zero_weight_decay_use_trust_one():
  variable = tf.Variable(np.zeros([3], np.float32), name='conv2d/kernel')
  optimizer = lars.LARSOptimizer(0.1, momentum=0.9, weight_decay=0.,
                                 exclude_from_weight_decay=EXCLUDE)
  optimizer.apply_gradients([(tf.constant([1., 2., 3.]), variable)])
  np.testing.assert_allclose(variable.numpy(), [-0.1, -0.2, -0.3], rtol=1e-6)


def test_distributed_step_matches_golden(lars_vectors, two_replica_strategy):
  """Each replica contributes half the gradient; names gain '/replica_1' on the second device."""
  case = CASES[0]
  vectors = lars_vectors[case]
  with two_replica_strategy.scope():
    variables = _golden_variables(vectors)
    optimizer = _make_optimizer(vectors, *_flags(case))

  @tf.function
  def step(grads):
    def replica_fn():
      optimizer.apply_gradients(zip([g / 2. for g in grads], variables))
    two_replica_strategy.run(replica_fn)

  for number in (1, 2):
    step([tf.constant(g, tf.float32) for g in vectors[f'grad_step{number}']])
  for variable, expected in zip(variables, vectors['after_step2']):
    for component in two_replica_strategy.experimental_local_results(variable):
      np.testing.assert_allclose(component.numpy(), expected, atol=1e-6)


@pytest.mark.parametrize('use_schedule', [True, False])
def test_checkpoint_has_only_momentum_slots_and_global_step(tmp_path, use_schedule):
  model = keras.Sequential([keras.layers.Dense(3, name='dense'),
                            keras.layers.BatchNormalization(name='batch_normalization')])
  model.build([None, 4])
  learning_rate = WarmUpAndCosineDecay(0.1, num_examples=1000, train_batch_size=100)
  optimizer = lars.build_optimizer('lars', learning_rate if use_schedule else 0.1,
                                   momentum=0.9, weight_decay=1e-6)
  optimizer.apply_gradients((tf.ones_like(v), v) for v in model.trainable_variables)
  checkpoint = tf.train.Checkpoint(model=model, global_step=optimizer.iterations,
                                   optimizer=optimizer)
  keys = {name for name, _ in tf.train.list_variables(checkpoint.write(str(tmp_path / 'ckpt')))}

  value = '/.ATTRIBUTES/VARIABLE_VALUE'
  slot = '/.OPTIMIZER_SLOT/optimizer/Momentum' + value
  trainable = ['model/layer_with_weights-0/kernel', 'model/layer_with_weights-0/bias',
               'model/layer_with_weights-1/gamma', 'model/layer_with_weights-1/beta']
  statistics = ['model/layer_with_weights-1/moving_mean',
                'model/layer_with_weights-1/moving_variance']
  expected = {'_CHECKPOINTABLE_OBJECT_GRAPH', 'global_step' + value}
  expected |= {path + value for path in trainable + statistics}
  expected |= {path + slot for path in trainable}
  if not use_schedule:  # a float learning rate is a variable in every legacy Keras optimizer
    expected.add('optimizer/learning_rate' + value)
  assert keys == expected


def test_get_config_round_trip():
  optimizer = lars.LARSOptimizer(0.5, momentum=0.8, use_nesterov=True, weight_decay=1e-4,
                                 exclude_from_weight_decay=['bias'], classic_momentum=False,
                                 eeta=0.002)
  config = optimizer.get_config()
  for key, value in dict(learning_rate=0.5, momentum=0.8, use_nesterov=True, weight_decay=1e-4,
                         classic_momentum=False, eeta=0.002).items():
    assert config[key] == pytest.approx(value) if isinstance(value, float) else config[key] == value
  clone = lars.LARSOptimizer.from_config(config)
  assert clone.exclude_from_layer_adaptation == ['bias']


def test_build_optimizer():
  optimizer = lars.build_optimizer('lars', 0.1, momentum=0.9, weight_decay=1e-6)
  assert isinstance(optimizer, lars.LARSOptimizer)
  assert (optimizer.momentum, optimizer.weight_decay, optimizer.eeta) == (0.9, 1e-6, 1e-3)
  assert optimizer.classic_momentum and not optimizer.use_nesterov
  assert list(optimizer.exclude_from_weight_decay) == EXCLUDE
  assert list(optimizer.exclude_from_layer_adaptation) == EXCLUDE
  sgd = lars.build_optimizer('momentum', 0.1, momentum=0.9, weight_decay=1e-6)
  assert isinstance(sgd, keras.optimizers.SGD) and sgd.nesterov
  assert not isinstance(sgd, keras.optimizers.legacy.Optimizer)
  adam = lars.build_optimizer('adam', 0.1, momentum=0.9, weight_decay=1e-6)
  assert isinstance(adam, keras.optimizers.Adam)
  assert not isinstance(adam, keras.optimizers.legacy.Optimizer)
  with pytest.raises(ValueError, match='unknown optimizer'):
    lars.build_optimizer('sgd', 0.1, 0.9, 0.)
