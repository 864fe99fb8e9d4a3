"""Training and evaluation metrics with the reference's names and order.

The names and their order are those of the official summaries and result.json, so existing
TensorBoard dashboards and scripts keep working.

Create the collections under `strategy.scope()` and update them in replica context; Keras
metrics are sync-on-read, so `result()` aggregates over replicas.
"""

import tensorflow as tf
import tf_keras as keras

from simclr_tf2.compat import mean_count
from simclr_tf2.training.callbacks import SKIPPED_STEPS_TAG

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
  """Per-step training metrics; the contrastive / supervised / distillation ones exist only
  when computed. Distillation (`train_mode='distill'`) has `train/distill_loss`, and
  `train/supervised_loss` only when labels are used (`label_weight` > 0); its
  `train/supervised_acc` is the student's agreement with the labels, or with the teacher's
  argmax when no labels are used."""

  def __init__(self, train_mode, lineareval_while_pretraining, loss_scaling=False,
               label_weight=0.):
    mean = keras.metrics.Mean
    self.weight_decay = mean('train/weight_decay')
    self.total_loss = mean('train/total_loss')
    self.contrast_loss = self.contrast_acc = self.contrast_entropy = None
    self.supervised_loss = self.supervised_acc = self.distill_loss = None
    if train_mode == 'pretrain':
      self.contrast_loss = mean('train/contrast_loss')
      self.contrast_acc = mean('train/contrast_acc')
      self.contrast_entropy = mean('train/contrast_entropy')
    if train_mode == 'distill':
      self.distill_loss = mean('train/distill_loss')
    if train_mode == 'finetune' or (train_mode == 'pretrain' and lineareval_while_pretraining) or (
        train_mode == 'distill' and label_weight > 0):
      self.supervised_loss = mean('train/supervised_loss')
    if self.supervised_loss is not None or train_mode == 'distill':
      self.supervised_acc = mean('train/supervised_acc')
    # Dynamic loss scaling (mixed_float16) skips the updates whose gradients overflow.
    self.skipped_steps = keras.metrics.Sum(SKIPPED_STEPS_TAG) if loss_scaling else None
    self.all = tuple(m for m in (
        self.weight_decay, self.total_loss, self.contrast_loss, self.contrast_acc,
        self.contrast_entropy, self.distill_loss, self.supervised_loss, self.supervised_acc,
        self.skipped_steps)
                     if m is not None)

  # `applied` (loss scaling only): 1.0 if the step's update is applied, 0.0 if it is skipped;
  # a skipped step's values (often non-finite) are left out of the means.

  def update(self, values, applied=None):
    """One step's values (task.StepValues) into the metrics this mode has. `applied` (1. or 0.,
    dynamic loss scaling only, else None) leaves a skipped step out of the means and counts it."""
    if applied is not None:
      self.update_skipped(applied)
    if self.contrast_loss is not None:
      self.update_contrastive(values.contrast_loss, values.logits_con, values.labels_con,
                              applied)
    if self.distill_loss is not None:
      _update(self.distill_loss, values.distill_loss, applied)
    if self.supervised_acc is not None:
      self.update_supervised(values.supervised_loss, values.labels, values.logits, applied)
    self.update_total(values.weight_decay, values.total_loss, applied)

  def update_contrastive(self, loss, logits_con, labels_con, applied=None):
    _update(self.contrast_loss, loss, applied)
    _update(self.contrast_acc, _argmax_match_rate(labels_con, logits_con), applied)
    _update(self.contrast_entropy, contrast_entropy(logits_con), applied)

  def update_supervised(self, loss, labels, logits, applied=None):
    """`loss` is None when distilling without labels (`labels` are then the teacher's)."""
    if self.supervised_loss is not None:
      _update(self.supervised_loss, loss, applied)
    _update(self.supervised_acc, _argmax_match_rate(labels, logits), applied)

  def update_total(self, weight_decay, total_loss, applied=None):
    """`total_loss` is the undivided per-replica loss, weight decay included."""
    _update(self.weight_decay, weight_decay, applied)
    _update(self.total_loss, total_loss, applied)

  def update_skipped(self, applied):
    """Counts a skipped step once: `applied` is the same on every replica, the first counts."""
    first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
    self.skipped_steps.update_state(tf.where(first, 1. - applied, 0.))

  def results(self):
    """As _MetricCollection.results; a block whose every update was skipped has no means."""
    results = super().results()
    if self.skipped_steps is not None and mean_count(self.total_loss) == 0:
      return {self.skipped_steps.name: results[self.skipped_steps.name]}
    return results


def _update(metric, value, applied):
  if applied is None:
    metric.update_state(value)
  else:
    metric.update_state(tf.where(applied > 0, value, tf.zeros_like(value)), sample_weight=applied)


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
