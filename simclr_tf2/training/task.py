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

from simclr_tf2.compat import create_optimizer_variables
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
      # Slots now, in the strategy scope: created in the first step they would make
      # tf.function trace it twice.
      create_optimizer_variables(self.optimizer, self.model.trainable_variables,
                                 self.model.updated_variables)
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
    one-hot [b, num_classes]. Call inside `strategy.run`. Returns (gradients, StepValues) as
    `compute_gradients` does: what was applied, in `model.trainable_variables` order (the
    training loop ignores them; a test or a user's loop can inspect them without tracing the
    model a second time). Under mixed_float16, a step whose gradients overflow is skipped: no
    weight changes, the loss scale halves, the step counts in `train/skipped_steps` and not in
    the loss metrics; as in Keras, the global step (and with it the learning-rate schedule)
    still advances.
    """
    self._require_optimizer()
    variables = self.model.trainable_variables
    gradients, values = self.compute_gradients(images, labels)
    applied = _applied_on_every_replica(gradients) if self._scales_loss else None
    self.train_metrics.update(values, applied)
    self._updater.apply_gradients(zip(gradients, variables))
    return gradients, values

  @property
  def loss_scale(self) -> Optional[float]:
    """The current dynamic loss scale under mixed_float16, else None."""
    return float(self._updater.loss_scale) if self._scales_loss else None

  @property
  def _scales_loss(self) -> bool:
    """Whether updates go through dynamic loss scaling (mixed_float16, once built)."""
    return self._updater is not None and self._updater is not self.optimizer

  def compute_gradients(self, images, labels):
    """(gradients, StepValues) of this replica's batch: train_step without the update.

    Updates the batch-norm moving statistics as the step does. With `micro_batch_size` the
    batch runs in chunks (see `_chunked_loss_gradients`); the gradients are the same ones up to
    float32 rounding, and exactly the plain ones for one chunk.
    """
    return self._gradients(images, labels)

  def _loss_gradients(self, images, labels):
    """(gradients, StepValues): the pure computation of a step (XLA-compiled if asked)."""
    targets = self._targets(images, labels)  # outside any tape: nothing to differentiate
    micro = self.config.micro_batch_size
    if micro:
      return self._chunked_loss_gradients(images, targets, micro)
    model = self.model
    with tf.GradientTape() as tape:
      projection, logits = model(images, training=True, blur_seed=self._blur_seed())
      loss, values = self._losses(projection, logits, targets)
    gradients = tape.gradient(loss, model.trainable_variables)
    if self._scales_loss:
      gradients = self._updater.get_unscaled_gradients(gradients)
    return gradients, StepValues(**values)

  def _targets(self, images, labels):  # pylint: disable=unused-argument
    """What the objective compares the model's outputs with, computed outside the gradient
    tape: here the one-hot labels (a distillation task adds the teacher's logits)."""
    return labels

  def _objective(self, projection, logits, labels, values):
    """The per-replica loss of the model's outputs before weight decay; fills `values`."""
    config = self.config
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

  def _chunk_loss(self, logits, labels, global_batch):
    """A chunk's share of the whole batch's per-example loss (before weight decay) when the
    batch runs in chunks without a contrastive term: the supervised cross-entropy's sum over
    the chunk divided by the global batch."""
    return tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(labels, logits)) / tf.cast(
        global_batch, tf.float32)

  def _losses(self, projection, logits, labels):
    """(loss to differentiate, values) of a replica's whole batch: the objective of the model's
    outputs plus weight decay; divided by the replicas, scaled if asked."""
    config, model = self.config, self.model
    num_replicas = tf.distribute.get_replica_context().num_replicas_in_sync
    values = {}
    loss = self._objective(projection, logits, labels, values)
    decay = weight_decay_loss(model.trainable_variables, config.optimizer, config.weight_decay)
    loss += decay
    values.update(weight_decay=decay, total_loss=loss)
    loss /= num_replicas  # gradients are summed across replicas
    if self._scales_loss:
      loss = self._updater.get_scaled_loss(loss)
    return loss, values

  def _chunked_loss_gradients(self, images, labels, micro):
    """The step of `_loss_gradients` on chunks of `micro` examples, one chunk at a time
    (`labels`: the targets, see `_targets`).

    Pretraining caches gradients (Gao et al. 2021): (1) forward every chunk without recording,
    keeping the projections (and linear-eval logits); (2) the whole batch's loss and its gradient
    w.r.t. them; (3) forward each chunk again, recording, and back-propagate its slice of those
    gradients; weight decay once. Finetuning accumulates per-chunk gradients of the per-example
    loss. A chunk is one batch-norm batch and gets its own blur seed (the same in both passes):
    chunk k of replica r behaves as replica r * K + k of a run on K times more replicas with
    global_bn=false, whose non-synchronised moving statistics are read as the mean over replicas
    (ON_READ, MEAN); here they are averaged over the chunks, once per step.
    """
    model, variables = self.model, self.model.trainable_variables
    batch = images.shape[0]
    if batch is None:
      batch = self.config.train_batch_size // tf.distribute.get_replica_context(
          ).num_replicas_in_sync
    num_chunks = batch // micro
    statistics = [v for v in model.non_trainable_variables
                  if v.synchronization == tf.VariableSynchronization.ON_READ]
    start = [tf.identity(v.read_value()) for v in statistics]
    chunk_seed = self._chunk_blur_seeds(num_chunks)

    def rows(tensor, k):
      return tf.ensure_shape(tensor[k * micro:(k + 1) * micro], [micro] + tensor.shape[1:])

    def forward(k):
      for variable, value in zip(statistics, start):  # every chunk starts from the step's values
        variable.assign(value)
      return model(rows(images, k), training=True, blur_seed=chunk_seed(k))

    pretrain = self.config.train_mode == 'pretrain'
    none_gradients = []  # which variables get no gradient (known when the loop body is traced)

    def accumulate(sums, gradients):
      none_gradients[:] = [g is None for g in gradients]
      return [s if g is None else s + tf.cast(g, s.dtype) for s, g in zip(sums, gradients)]

    def stack(array, views):
      """[K, views * c, ...] chunk outputs -> [views * b, ...] rows in the plain batch's order."""
      stacked = array.stack()
      shape = tf.shape(stacked)
      stacked = tf.reshape(stacked, tf.concat([[num_chunks, views, micro], shape[2:]], 0))
      perm = [1, 0, 2] + list(range(3, stacked.shape.rank))
      return tf.reshape(tf.transpose(stacked, perm), tf.concat([[-1], shape[2:]], 0))

    def chunk_rows(tensor, k, views):
      """Rows of chunk k in a [views * b, ...] tensor, in the chunk's own order."""
      rows = tf.reshape(tensor, tf.concat([[views, num_chunks, micro], tf.shape(tensor)[1:]], 0))
      return tf.reshape(rows[:, k], tf.concat([[-1], tf.shape(tensor)[1:]], 0))

    # -0.0 + g is g bit for bit (0.0 + -0.0 is not): one chunk reproduces the plain gradients.
    sums = [tf.fill(tf.shape(v), tf.constant(-0., v.dtype)) for v in variables]
    statistic_sums = [tf.zeros_like(v) for v in statistics]
    loop = dict(parallel_iterations=1)  # chunks one after another: one chunk's activations live
    if pretrain:
      # (1) projections and logits of every chunk, nothing recorded.
      def first_pass(k, projections, all_logits):
        projection, logits = forward(k)
        projections = projections.write(k, tf.cast(projection, tf.float32))
        if logits is not None:
          all_logits = all_logits.write(k, tf.cast(logits, tf.float32))
        return k + 1, projections, all_logits
      _, projections, all_logits = tf.while_loop(
          lambda k, *_: k < num_chunks, first_pass,
          (0, tf.TensorArray(tf.float32, num_chunks), tf.TensorArray(tf.float32, num_chunks)),
          **loop)
      has_logits = model.has_supervised_head
      projection = stack(projections, 2)
      logits = stack(all_logits, 2) if has_logits else None
      # (2) the whole batch's loss; its gradient w.r.t. the chunk outputs and the weights (decay).
      with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch([projection] + ([logits] if has_logits else []) + variables)
        loss, values = self._losses(projection, logits, labels)
      outputs = [projection] + ([logits] if has_logits else [])
      cached = tape.gradient(loss, outputs + variables)
      output_gradients, decay_gradients = cached[:len(outputs)], cached[len(outputs):]
    else:
      has_logits, values = True, None

    # (3) each chunk recorded; its slice of the cached gradients (pretrain) or its share of the
    # per-example loss (finetune) back-propagated; gradients and moving statistics summed.
    def second_pass(k, sums, statistic_sums, all_logits):
      with tf.GradientTape() as tape:
        projection, logits = forward(k)
        if pretrain:
          targets = [tf.cast(projection, tf.float32)]
          seeds = [chunk_rows(output_gradients[0], k, 2)]
          if has_logits:
            targets.append(tf.cast(logits, tf.float32))
            seeds.append(chunk_rows(output_gradients[1], k, 2))
        else:
          logits = tf.cast(logits, tf.float32)
          chunk_loss = self._chunk_loss(
              logits, tf.nest.map_structure(lambda t: rows(t, k), labels), batch * num_replicas)
          if self._scales_loss:
            chunk_loss = self._updater.get_scaled_loss(chunk_loss)
          targets, seeds = chunk_loss, None
          all_logits = all_logits.write(k, logits)
      sums = accumulate(sums, tape.gradient(targets, variables, output_gradients=seeds))
      statistic_sums = [s + v.read_value() for s, v in zip(statistic_sums, statistics)]
      return k + 1, sums, statistic_sums, all_logits

    num_replicas = tf.distribute.get_replica_context().num_replicas_in_sync
    _, sums, statistic_sums, all_logits = tf.while_loop(
        lambda k, *_: k < num_chunks, second_pass,
        (0, sums, statistic_sums, tf.TensorArray(tf.float32, num_chunks)), **loop)
    if num_chunks > 1:  # one chunk keeps its own update, bit for bit the plain step's
      for variable, total in zip(statistics, statistic_sums):
        variable.assign(total / num_chunks)

    if not pretrain:  # the losses and metrics of the whole batch; weight decay's gradient
      with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(variables)
        loss, values = self._losses(None, stack(all_logits, 1), labels)
      decay_gradients = tape.gradient(loss, variables)
    gradients = []
    for none, total, decay in zip(none_gradients, sums, decay_gradients):
      if none:
        gradients.append(decay)
      else:
        gradients.append(total if decay is None else total + decay)
    if self._scales_loss:
      gradients = self._updater.get_unscaled_gradients(gradients)
    return gradients, StepValues(**values)


  def _chunk_blur_seeds(self, num_chunks):
    """k -> the blur seed of chunk k: that of replica r * K + k of a K times larger run when
    seeded; unseeded, one random draw per step (pass 1 and pass 3 must blur alike)."""
    context = tf.distribute.get_replica_context()
    if self.config.seed is None:
      step_seed = tf.random.uniform([2], maxval=tf.int64.max, dtype=tf.int64)
    else:
      step_seed = self._step_seed()
    first = tf.cast(context.replica_id_in_sync_group, tf.int64) * num_chunks
    return lambda k: tf.random.experimental.stateless_fold_in(
        step_seed, first + tf.cast(k, tf.int64))

  def _blur_seed(self):
    """Seeded runs: the blur of a step depends on (seed, global step, replica) only, so a run
    resumed from a checkpoint blurs as the uninterrupted one did."""
    if self.config.seed is None:
      return None
    context = tf.distribute.get_replica_context()
    return tf.random.experimental.stateless_fold_in(
        self._step_seed(), tf.cast(context.replica_id_in_sync_group, tf.int64))

  def _step_seed(self):
    return tf.random.experimental.stateless_fold_in(
        tf.constant([self.config.seed, 2], tf.int64), tf.cast(self.global_step, tf.int64))

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
