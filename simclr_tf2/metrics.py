"""Training and evaluation metrics with the reference's names and order.

The names and their order are those of the official summaries and result.json, so existing
TensorBoard dashboards and scripts keep working.

Create the collections under `strategy.scope()` and update them in replica context; Keras
metrics are sync-on-read, so `result()` aggregates over replicas.
"""

import tensorflow as tf
import tf_keras as keras

ENTROPY_EPSILON = 1e-8


def _argmax_match_rate(labels, logits):
  """Fraction of rows whose argmax of `labels` equals the argmax of `logits`."""
  return tf.reduce_mean(tf.cast(tf.equal(tf.argmax(labels, 1), tf.argmax(logits, 1)), tf.float32))


def contrast_entropy(logits_con):
  """Mean over rows of the entropy of softmax(logits_con) (the N cross-view columns)."""
  prob = tf.nn.softmax(logits_con)
  return -tf.reduce_mean(tf.reduce_sum(prob * tf.math.log(prob + ENTROPY_EPSILON), -1))


def reset_metrics(metrics):
  for metric in metrics:
    metric.reset_state()  # tf_keras name; `reset_states` is its deprecated alias


class _MetricCollection:
  """`all` lists the metrics in summary/log order."""

  all = ()

  def results(self):
    """{tag: float} in summary order, for logs and summaries."""
    return {metric.name: float(metric.result()) for metric in self.all}

  def reset(self):
    reset_metrics(self.all)


class TrainMetrics(_MetricCollection):
  """Per-step training metrics; the contrastive / supervised ones exist only when computed."""

  def __init__(self, train_mode, lineareval_while_pretraining):
    mean = keras.metrics.Mean
    self.weight_decay = mean('train/weight_decay')
    self.total_loss = mean('train/total_loss')
    self.contrast_loss = self.contrast_acc = self.contrast_entropy = None
    self.supervised_loss = self.supervised_acc = None
    if train_mode == 'pretrain':
      self.contrast_loss = mean('train/contrast_loss')
      self.contrast_acc = mean('train/contrast_acc')
      self.contrast_entropy = mean('train/contrast_entropy')
    if train_mode == 'finetune' or lineareval_while_pretraining:
      self.supervised_loss = mean('train/supervised_loss')
      self.supervised_acc = mean('train/supervised_acc')
    self.all = tuple(m for m in (
        self.weight_decay, self.total_loss, self.contrast_loss, self.contrast_acc,
        self.contrast_entropy, self.supervised_loss, self.supervised_acc) if m is not None)

  def update_contrastive(self, loss, logits_con, labels_con):
    self.contrast_loss.update_state(loss)
    self.contrast_acc.update_state(_argmax_match_rate(labels_con, logits_con))
    self.contrast_entropy.update_state(contrast_entropy(logits_con))

  def update_supervised(self, loss, labels, logits):
    self.supervised_loss.update_state(loss)
    self.supervised_acc.update_state(_argmax_match_rate(labels, logits))

  def update_total(self, weight_decay, total_loss):
    """`total_loss` is the undivided per-replica loss, weight decay included."""
    self.weight_decay.update_state(weight_decay)
    self.total_loss.update_state(total_loss)


class EvalMetrics(_MetricCollection):
  """Linear-head evaluation metrics, accumulated over the whole eval run."""

  def __init__(self):
    self.regularization_loss = keras.metrics.Mean('eval/regularization_loss')
    self.top_1_accuracy = keras.metrics.Accuracy('eval/label_top_1_accuracy')
    self.top_5_accuracy = keras.metrics.TopKCategoricalAccuracy(5, 'eval/label_top_5_accuracy')
    self.all = (self.regularization_loss, self.top_1_accuracy, self.top_5_accuracy)

  def update(self, labels, logits, regularization_loss):
    """`labels` one-hot [B, C], `logits` [B, C], `regularization_loss` the weight-decay value."""
    self.regularization_loss.update_state(regularization_loss)
    self.top_1_accuracy.update_state(tf.argmax(labels, 1), tf.argmax(logits, 1))
    self.top_5_accuracy.update_state(labels, logits)
