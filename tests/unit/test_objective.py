"""NT-Xent, supervised loss and weight decay vs golden vectors and an independent NumPy version."""

import json

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.training import objective


@pytest.fixture(scope='module')
def ntxent(golden_dir):
  return json.loads((golden_dir / 'ntxent_vectors.json').read_text())


def _hidden(ntxent):
  return np.array(ntxent['input_hidden_rows_view1_then_view2'], np.float32)


def _numpy_ntxent_replicas(hidden, temperature, num_replicas):
  """Per-replica NT-Xent losses (float64): each replica's rows against all rows of both views of
  every replica; an anchor's similarity with itself is masked out with -1e9."""
  h = hidden.astype(np.float64)
  h = h / np.sqrt(np.maximum((h ** 2).sum(1, keepdims=True), 1e-12))
  big_n = len(h) // 2
  h1_all, h2_all = h[:big_n], h[big_n:]
  n = big_n // num_replicas
  losses = []
  for replica in range(num_replicas):
    rows = np.arange(n) + replica * n
    h1, h2 = h1_all[rows], h2_all[rows]
    mask = np.zeros((n, big_n))
    mask[np.arange(n), rows] = 1.
    aa = h1 @ h1_all.T / temperature - mask * 1e9
    bb = h2 @ h2_all.T / temperature - mask * 1e9
    ab = h1 @ h2_all.T / temperature
    ba = h2 @ h1_all.T / temperature

    def cross_entropy(logits):
      logits = logits - logits.max(1, keepdims=True)
      log_prob = logits - np.log(np.exp(logits).sum(1, keepdims=True))
      return -log_prob[np.arange(n), rows]

    losses.append(np.mean(cross_entropy(np.concatenate([ab, aa], 1)) +
                          cross_entropy(np.concatenate([ba, bb], 1))))
  return np.array(losses)


def _numpy_gradient(hidden, temperature, eps=1e-6):
  """Central finite differences of the single-device NumPy loss."""
  grad = np.zeros(hidden.shape)
  base = hidden.astype(np.float64)
  for index in np.ndindex(*hidden.shape):
    plus, minus = base.copy(), base.copy()
    plus[index] += eps
    minus[index] -= eps
    grad[index] = (_numpy_ntxent_replicas(plus, temperature, 1)[0] -
                   _numpy_ntxent_replicas(minus, temperature, 1)[0]) / (2 * eps)
  return grad


def _single_device_loss_and_grad(hidden, temperature):
  hidden = tf.constant(hidden)
  with tf.GradientTape() as tape:
    tape.watch(hidden)
    loss, logits_ab, labels = objective.contrastive_loss(hidden, True, temperature)
  return loss, logits_ab, labels, tape.gradient(loss, hidden)


def test_ntxent_single_device_matches_golden_and_numpy(ntxent):
  hidden, temperature = _hidden(ntxent), ntxent['temperature']
  loss, logits_ab, labels, grad = _single_device_loss_and_grad(hidden, temperature)
  golden = ntxent['single_device']
  np.testing.assert_allclose(loss.numpy(), golden['loss'], atol=1e-6)
  np.testing.assert_allclose(loss.numpy(), _numpy_ntxent_replicas(hidden, temperature, 1)[0],
                             atol=1e-6)
  assert logits_ab.shape == tuple(golden['logits_ab_shape'])
  assert labels.shape == tuple(golden['labels_shape'])
  np.testing.assert_array_equal(np.argmax(labels, 1), np.arange(4))
  np.testing.assert_allclose(grad.numpy(), _numpy_gradient(hidden, temperature), atol=1e-4)


def test_ntxent_without_normalisation_matches_numpy():
  hidden = np.random.RandomState(0).randn(6, 3).astype(np.float32) * 0.3
  loss, _, _ = objective.contrastive_loss(tf.constant(hidden), hidden_norm=False, temperature=1.)
  # With unit-norm rows, hidden_norm=False must equal the normalised NumPy loss.
  unit = hidden / np.linalg.norm(hidden, axis=1, keepdims=True)
  loss_unit, _, _ = objective.contrastive_loss(tf.constant(unit), hidden_norm=False)
  np.testing.assert_allclose(loss_unit.numpy(), _numpy_ntxent_replicas(unit, 1., 1)[0], atol=1e-6)
  assert abs(loss.numpy() - loss_unit.numpy()) > 1e-3  # normalisation really was skipped


def test_ntxent_two_replicas(ntxent, two_replica_strategy):
  strategy = two_replica_strategy
  hidden, temperature = _hidden(ntxent), ntxent['temperature']
  num_replicas = strategy.num_replicas_in_sync
  n = len(hidden) // 2 // num_replicas

  def local_rows(context):  # view 1 then view 2 of this replica's n images
    start = context.replica_id_in_sync_group * n
    return tf.constant(np.concatenate([hidden[start:start + n], hidden[4 + start:4 + start + n]]))

  distributed_hidden = strategy.experimental_distribute_values_from_function(local_rows)

  @tf.function
  def step(local_hidden):
    def replica_fn(h):
      with tf.GradientTape() as tape:
        tape.watch(h)
        loss, logits_ab, labels = objective.contrastive_loss(h, True, temperature)
        scaled = loss / num_replicas  # as in training: gradients are summed over replicas
      return loss, logits_ab, labels, tape.gradient(scaled, h)
    return strategy.run(replica_fn, args=(local_hidden,))

  losses, logits_ab, labels, grads = (strategy.experimental_local_results(t)
                                      for t in step(distributed_hidden))
  golden = ntxent['two_replicas']
  losses = np.array([l.numpy() for l in losses])
  np.testing.assert_allclose(losses, golden['per_replica_loss'], atol=1e-6)
  np.testing.assert_allclose(losses, _numpy_ntxent_replicas(hidden, temperature, 2), atol=1e-6)
  np.testing.assert_allclose(losses.mean(), golden['mean_of_replicas'], atol=1e-6)
  np.testing.assert_allclose(losses.mean(), ntxent['single_device']['loss'], atol=1e-6)
  for replica in range(num_replicas):
    assert logits_ab[replica].shape == tuple(golden['logits_ab_shape_per_replica'])
    assert labels[replica].shape == tuple(golden['labels_shape_per_replica'])
    np.testing.assert_array_equal(np.argmax(labels[replica], 1),
                                  golden['positive_index_per_replica'][replica])

  # Reassemble per-replica gradients into the global [view1; view2] layout.
  grad_view1 = np.concatenate([g.numpy()[:n] for g in grads])
  grad_view2 = np.concatenate([g.numpy()[n:] for g in grads])
  _, _, _, single_grad = _single_device_loss_and_grad(hidden, temperature)
  np.testing.assert_allclose(np.concatenate([grad_view1, grad_view2]), single_grad.numpy(),
                             atol=1e-6)


def test_supervised_loss_is_mean_cross_entropy():
  labels = np.array([[1., 0., 0.], [0., 0., 1.]], np.float32)
  logits = np.array([[2., 1., 0.], [0., 0., 0.]], np.float32)
  expected = np.mean([-np.log(np.exp(2.) / (np.exp(2.) + np.exp(1.) + 1.)), np.log(3.)])
  np.testing.assert_allclose(objective.supervised_loss(labels, logits).numpy(), expected,
                             rtol=1e-6)


@pytest.fixture(scope='module')
def golden_trainable_variables(golden_dir):
  """Small variables carrying the Keras names of the SK+SE ResNet-18 (has SE biases)."""
  lines = (golden_dir / 'r18_sk_se_cifar_pretrain_lars.varnames.txt').read_text().splitlines()
  names = [line.split()[1] for line in lines if line.startswith('T ')]
  return [tf.Variable(np.full([2], i + 1., np.float32), name=name[:-len(':0')])
          for i, name in enumerate(names)]


def _expected_decay(variables, weight_decay):
  return weight_decay * sum(float(np.sum(v.numpy() ** 2)) / 2 for v in variables)


def test_weight_decay_lars_only_supervised_head_kernel(golden_trainable_variables):
  variables = golden_trainable_variables
  included = objective.weight_decay_variables(variables, 'lars')
  assert [v.name for v in included] == ['head_supervised/linear_layer/dense_3/kernel:0']
  np.testing.assert_allclose(objective.weight_decay_loss(variables, 'lars', 1e-2).numpy(),
                             _expected_decay(included, 1e-2), rtol=1e-6)


@pytest.mark.parametrize('optimizer_name', ['momentum', 'adam'])
def test_weight_decay_non_lars_all_but_batch_norm(golden_trainable_variables, optimizer_name):
  variables = golden_trainable_variables
  included = objective.weight_decay_variables(variables, optimizer_name)
  # Structural expectation: every kernel and bias (conv, SE, projection, supervised head), no
  # BN gamma/beta. ResNet-18 SK/SE (CIFAR stem): 21 conv + 16 SE kernels + 16 SE biases,
  # 3 projection kernels, supervised kernel + bias.
  expected = [v for v in variables if v.name.endswith(('/kernel:0', '/bias:0'))]
  assert [v.name for v in included] == [v.name for v in expected]
  assert len(included) == 58
  assert sum(v.name.endswith('/bias:0') for v in included) == 17
  np.testing.assert_allclose(objective.weight_decay_loss(variables, optimizer_name, 1e-6).numpy(),
                             _expected_decay(expected, 1e-6), rtol=1e-6)


def test_weight_decay_empty_is_float_zero():
  bn_only = [tf.Variable([1., 2.], name='batch_normalization/gamma')]
  value = objective.weight_decay_loss(bn_only, 'lars', 1e-6)
  assert value.dtype == tf.float32 and float(value) == 0.
