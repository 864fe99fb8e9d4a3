"""The SimCLR task: what is trained, independent of how the loop around it runs.

`SimCLRTask` owns the model, the optimizer and its learning-rate schedule, the losses and the
metrics, and defines one training step and one evaluation step *per replica*. `train.Trainer`
drives it; a user's own loop can drive it the same way:

    task = SimCLRTask(config, num_classes=10, strategy=strategy)
    task.build_optimizer(num_train_examples)

    @tf.function
    def train_one_step(iterator):
      strategy.run(task.train_step, next(iterator))
"""

from typing import NamedTuple, Optional

import tensorflow as tf
import tf_keras as keras

from simclr_tf2.config import Config
from simclr_tf2.errors import ConfigError
from simclr_tf2.training.lars import build_optimizer
from simclr_tf2.training.metrics import EvalMetrics, TrainMetrics
from simclr_tf2.network.model import SimCLRModel, build_model
from simclr_tf2.training.objective import contrastive_loss, supervised_loss, weight_decay_loss
from simclr_tf2.training.schedule import WarmUpAndCosineDecay


class SimCLRTask:
  """Model, optimizer, losses and metrics of one Config, built under `strategy`.

  `strategy` defaults to the current one (`tf.distribute.get_strategy()`). Variables are
  created at construction, so a checkpoint can be restored into `model` right away.
  """

  def __init__(self, config: Config, num_classes: Optional[int],
               strategy: Optional[tf.distribute.Strategy] = None):
    self.config = config
    self.strategy = strategy or tf.distribute.get_strategy()
    if config.jit_compile and config.global_bn and _is_distributed(self.strategy):
      # The synchronised batch norm all-reduces inside the replica step, which a nested
      # XLA-compiled function cannot contain (TensorFlow's merge_call restriction).
      raise ConfigError('--jit_compile=true under a distribution strategy needs '
                        '--global_bn=false (identical results on one device)')
    with self.strategy.scope():
      self.model: SimCLRModel = build_model(num_classes, config)
      self.model.create_variables()
      self.eval_metrics = EvalMetrics() if self.model.has_supervised_head else None
    self.optimizer = None
    self.schedule = None
    self.train_metrics = None
    self._updater = None  # the optimizer, behind dynamic loss scaling under mixed_float16
    # XLA compiles the pure computation only: optimizer updates, metrics and summaries stay out.
    self._gradients = self._maybe_compile(self._loss_gradients)
    self._eval_logits = self._maybe_compile(self._logits)

  @property
  def can_evaluate(self) -> bool:
    """Evaluation scores the supervised (linear-eval or fine-tuned) head."""
    return self.model.has_supervised_head

  def build_optimizer(self, num_train_examples: int):
    """Creates the schedule, the optimizer and the training metrics; returns the optimizer."""
    config = self.config
    with self.strategy.scope():
      self.schedule = WarmUpAndCosineDecay.from_config(config, num_train_examples)
      self.optimizer = build_optimizer(config.optimizer, self.schedule, config.momentum,
                                       config.weight_decay)
      self.train_metrics = TrainMetrics(config.train_mode, config.lineareval_while_pretraining,
                                        loss_scaling=config.precision == 'mixed_float16',
                                        label_weight=config.distill_label_weight)
      # Reading `iterations` creates the legacy optimizer's step counter here, in the strategy
      # scope; created lazily inside a distributed step it would fail.
      _ = self.optimizer.iterations
      # The checkpoint keeps the inner optimizer (official keys); the loss scale is not saved
      # and restarts at its initial value on resume.
      self._updater = (keras.mixed_precision.LossScaleOptimizer(self.optimizer)
                       if config.precision == 'mixed_float16' else self.optimizer)
    return self.optimizer

  @property
  def global_step(self) -> tf.Variable:
    """The number of updates applied (the optimizer's step counter)."""
    self._require_optimizer()
    return self.optimizer.iterations

  def checkpoint(self) -> tf.train.Checkpoint:
    """The training state with the official object graph: model, global_step, optimizer."""
    self._require_optimizer()
    return tf.train.Checkpoint(model=self.model, global_step=self.optimizer.iterations,
                               optimizer=self.optimizer)

  def train_step(self, images, labels):
    """One update on this replica's batch: forward, losses, gradients, optimizer, metrics.

    `images` is [b, s, s, 6] (two views) when pretraining, [b, s, s, 3] otherwise; `labels`
    one-hot [b, num_classes]. Call inside `strategy.run`. Under mixed_float16, a step whose
    gradients overflow is skipped: no weight changes, the loss scale halves, the step counts
    in `train/skipped_steps` and not in the loss metrics; as in Keras, the global step (and
    with it the learning-rate schedule) still advances.
    """
    self._require_optimizer()
    variables = self.model.trainable_variables
    gradients, values = self._gradients(images, labels)
    applied = _applied_on_every_replica(gradients) if self._scales_loss else None
    self.train_metrics.update(values, applied)
    self._updater.apply_gradients(zip(gradients, variables))

  @property
  def loss_scale(self) -> Optional[float]:
    """The current dynamic loss scale under mixed_float16, else None."""
    return float(self._updater.loss_scale) if self._scales_loss else None

  @property
  def _scales_loss(self) -> bool:
    """Whether updates go through dynamic loss scaling (mixed_float16, once built)."""
    return self._updater is not None and self._updater is not self.optimizer

  def _loss_gradients(self, images, labels):
    """(gradients, StepValues): the pure computation of a step (XLA-compiled if asked)."""
    config, model = self.config, self.model
    num_replicas = tf.distribute.get_replica_context().num_replicas_in_sync
    values = {}
    targets = self._targets(images, labels)  # outside the tape: nothing to differentiate
    with tf.GradientTape() as tape:
      loss = self._objective(images, targets, values)
      decay = weight_decay_loss(model.trainable_variables, config.optimizer, config.weight_decay)
      loss += decay
      values.update(weight_decay=decay, total_loss=loss)
      loss /= num_replicas  # gradients are summed across replicas
      if self._scales_loss:
        loss = self._updater.get_scaled_loss(loss)
    gradients = tape.gradient(loss, model.trainable_variables)
    if self._scales_loss:
      gradients = self._updater.get_unscaled_gradients(gradients)
    return gradients, StepValues(**values)

  def _targets(self, images, labels):  # pylint: disable=unused-argument
    """What the objective compares the model's outputs with: here the one-hot labels."""
    return labels

  def _objective(self, images, labels, values):
    """The per-replica loss before weight decay, recorded by the tape; fills `values`."""
    config, model = self.config, self.model
    projection, logits = model(images, training=True, blur_seed=self._blur_seed())
    loss = tf.constant(0.)
    if projection is not None:
      projection = tf.cast(projection, tf.float32)  # the loss is float32 at any precision
      con_loss, values['logits_con'], values['labels_con'] = contrastive_loss(
          projection, hidden_norm=config.hidden_norm, temperature=config.temperature)
      loss += con_loss
      values['contrast_loss'] = con_loss
    if logits is not None:
      logits = tf.cast(logits, tf.float32)
      if config.train_mode == 'pretrain':  # the linear-eval head classifies both views
        labels = tf.concat([labels, labels], 0)
      sup_loss = supervised_loss(labels, logits)
      loss += sup_loss
      values.update(supervised_loss=sup_loss, labels=labels, logits=logits)
    return loss

  def _blur_seed(self):
    """Seeded runs: the blur of a step depends on (seed, global step, replica) only, so a run
    resumed from a checkpoint blurs as the uninterrupted one did."""
    if self.config.seed is None:
      return None
    context = tf.distribute.get_replica_context()
    step_seed = tf.random.experimental.stateless_fold_in(
        tf.constant([self.config.seed, 2], tf.int64), tf.cast(self.global_step, tf.int64))
    return tf.random.experimental.stateless_fold_in(
        step_seed, tf.cast(context.replica_id_in_sync_group, tf.int64))

  def eval_step(self, images, labels):
    """Accumulates the supervised head's top-1/top-5 on this replica's batch into
    `eval_metrics` (reset them between evaluations). Call inside `strategy.run`."""
    if not self.can_evaluate:
      raise ValueError('this model has no supervised head to evaluate: use '
                       'train_mode=finetune or lineareval_while_pretraining=true')
    self.eval_metrics.update(labels, self._eval_logits(images), weight_decay_loss(
        self.model.trainable_variables, self.config.optimizer, self.config.weight_decay))

  def _logits(self, images):
    _, logits = self.model(images, training=False)
    return tf.cast(logits, tf.float32)

  def _maybe_compile(self, function):
    return tf.function(function, jit_compile=True) if self.config.jit_compile else function

  def _require_optimizer(self):
    if self.optimizer is None:
      raise ValueError('call build_optimizer(num_train_examples) before training')


class StepValues(NamedTuple):
  """What one training step computed, for the metrics (None: not computed in this mode).
  `total_loss` is the undivided per-replica loss, weight decay included."""
  weight_decay: tf.Tensor
  total_loss: tf.Tensor
  contrast_loss: Optional[tf.Tensor] = None
  logits_con: Optional[tf.Tensor] = None
  labels_con: Optional[tf.Tensor] = None
  supervised_loss: Optional[tf.Tensor] = None
  distill_loss: Optional[tf.Tensor] = None
  labels: Optional[tf.Tensor] = None
  logits: Optional[tf.Tensor] = None


def _applied_on_every_replica(gradients) -> tf.Tensor:
  """1.0 if every replica's gradients are finite (dynamic loss scaling then applies the
  all-reduced update), else 0.0; the same value on every replica."""
  finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in gradients
                          if g is not None])
  overflowed = tf.distribute.get_replica_context().all_reduce(
      tf.distribute.ReduceOp.SUM, 1. - tf.cast(finite, tf.float32))
  return tf.cast(tf.equal(overflowed, 0.), tf.float32)


def _is_distributed(strategy: tf.distribute.Strategy) -> bool:
  """Whether `strategy` is a real tf.distribute strategy, not the default no-op one."""
  with strategy.scope():
    return tf.distribute.has_strategy()
