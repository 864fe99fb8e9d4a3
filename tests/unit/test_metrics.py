"""Metric names, order and hand-computed values on tiny inputs."""

import math

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.training import metrics

ALL_TRAIN = ['train/weight_decay', 'train/total_loss', 'train/contrast_loss', 'train/contrast_acc',
             'train/contrast_entropy', 'train/supervised_loss', 'train/supervised_acc']


@pytest.mark.parametrize('train_mode, lineareval, expected', [
    ('pretrain', True, ALL_TRAIN),
    ('pretrain', False, ALL_TRAIN[:5]),
    ('finetune', False, ALL_TRAIN[:2] + ALL_TRAIN[5:]),
    ('finetune', True, ALL_TRAIN[:2] + ALL_TRAIN[5:]),
])
def test_train_metric_names_and_order(train_mode, lineareval, expected):
  assert [m.name for m in metrics.TrainMetrics(train_mode, lineareval).all] == expected


def test_train_metric_values_and_reset():
  train = metrics.TrainMetrics('pretrain', True)
  # Row 0: argmax 0 (positive at 0, correct), uniform over 2 -> entropy log 2.
  # Row 1: argmax 0 but positive at 1 (wrong), one-hot-like -> entropy ~0.
  logits_con = tf.constant([[0., 0.], [100., 0.]])
  labels_con = tf.constant([[1., 0., 0., 0.], [0., 1., 0., 0.]])
  train.update_contrastive(2.5, logits_con, labels_con)
  train.update_contrastive(3.5, logits_con, labels_con)
  train.update_supervised(0.7, tf.constant([[0., 1.], [1., 0.], [0., 1.]]),
                          tf.constant([[0.1, 0.9], [0.2, 0.8], [0.3, 0.7]]))
  train.update_total(0.25, 4.)
  train.update_total(0.75, 6.)
  expected = {
      'train/weight_decay': 0.5, 'train/total_loss': 5., 'train/contrast_loss': 3.,
      'train/contrast_acc': 0.5,
      # Row 0: -2 * 0.5 * log(0.5 + eps) ~ log 2; row 1: ~0.
      'train/contrast_entropy': -0.5 * math.log(0.5 + 1e-8),
      'train/supervised_loss': 0.7, 'train/supervised_acc': 2 / 3,
  }
  results = train.results()
  assert list(results) == ALL_TRAIN
  np.testing.assert_allclose([results[k] for k in ALL_TRAIN], [expected[k] for k in ALL_TRAIN],
                             rtol=1e-5, atol=1e-6)
  train.reset()
  assert all(value == 0. for value in train.results().values())


def test_contrast_entropy_uses_epsilon():
  # Entropy of softmax([0, log 3]) = [1/4, 3/4], with the reference's log(p + 1e-8).
  probs = np.array([0.25, 0.75])
  expected = -np.sum(probs * np.log(probs + 1e-8))
  np.testing.assert_allclose(metrics.contrast_entropy(tf.constant([[0., math.log(3.)]])).numpy(),
                             expected, rtol=1e-6)


def test_eval_metrics():
  evaluation = metrics.EvalMetrics()
  assert [m.name for m in evaluation.all] == [
      'eval/regularization_loss', 'eval/label_top_1_accuracy', 'eval/label_top_5_accuracy']
  labels = tf.one_hot([0, 6], 7)
  # Example 0: class 0 ranked first. Example 1: class 6 ranked 6th of 7 (outside the top 5).
  logits = tf.constant([[7., 6., 5., 4., 3., 2., 1.], [7., 6., 5., 4., 3., 1., 2.]])
  evaluation.update(labels, logits, 0.1)
  evaluation.update(tf.one_hot([2], 7), tf.constant([[1., 2., 3., 4., 5., 6., 0.]]), 0.4)
  # Example 2: class 2 ranked 5th -> top-5 hit, top-1 miss.
  np.testing.assert_allclose(list(evaluation.results().values()), [0.25, 1 / 3, 2 / 3], rtol=1e-6)
  evaluation.reset()
  assert all(value == 0. for value in evaluation.results().values())


def test_metrics_aggregate_over_replicas(two_replica_strategy):
  with two_replica_strategy.scope():
    train = metrics.TrainMetrics('finetune', False)

  @tf.function
  def step():
    def replica_fn():
      context = tf.distribute.get_replica_context()
      replica = tf.cast(context.replica_id_in_sync_group, tf.float32)
      train.update_total(replica, 10. * replica)  # replicas 0 and 1
    two_replica_strategy.run(replica_fn)

  step()
  assert train.results()['train/weight_decay'] == pytest.approx(0.5)
  assert train.results()['train/total_loss'] == pytest.approx(5.)


def test_skipped_steps_are_counted_once_and_left_out_of_the_means(two_replica_strategy):
  """mixed_float16: a skipped step (applied=0, often non-finite values) counts once in
  train/skipped_steps, whatever the number of replicas, and is not averaged into the losses."""
  with two_replica_strategy.scope():
    train = metrics.TrainMetrics('finetune', False, loss_scaling=True)
  assert [m.name for m in train.all][-1] == 'train/skipped_steps'

  @tf.function
  def step(weight_decay, total_loss, applied):
    def replica_fn():
      train.update_skipped(applied)
      train.update_total(weight_decay, total_loss, applied)
    two_replica_strategy.run(replica_fn)

  step(float('nan'), float('inf'), 0.)
  assert train.results() == {'train/skipped_steps': 1.}  # no applied step: no means
  step(0.5, 2., 1.)
  step(float('nan'), float('nan'), 0.)
  results = train.results()
  assert [results[tag] for tag in ('train/weight_decay', 'train/total_loss',
                                   'train/skipped_steps')] == [0.5, 2., 2.]
