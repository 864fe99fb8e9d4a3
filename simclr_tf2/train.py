"""Training and evaluation under tf.distribute (spec training.md), with the reference's semantics
and its defects fixed: exact stop at train_steps (K8), steps_per_loop >= 1 (K21), strict restores
(K15/K27), working eval mode (K9), export after every evaluation (K10), NaN guard, progress logs.
"""

import json
import logging
import math
import os
import time
from typing import Optional

import tensorflow as tf
import tf_keras as keras

from simclr_tf2 import checkpoint as ckpt_lib
from simclr_tf2.config import Config
from simclr_tf2.data import build_distributed_dataset, get_source
from simclr_tf2.lars import build_optimizer
from simclr_tf2.metrics import EvalMetrics, TrainMetrics
from simclr_tf2.model import SimCLRModel, build_model
from simclr_tf2.objective import contrastive_loss, supervised_loss, weight_decay_loss
from simclr_tf2.schedule import WarmUpAndCosineDecay

EVAL_POLL_SECONDS = 15
_STRATEGIES = {}  # build_strategy's per-process strategies, by kind


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. the loss became NaN); checkpoints written so far are kept."""


def write_json(path, value):
  """Writes JSON atomically: readers never see a half-written file."""
  tf.io.gfile.makedirs(os.path.dirname(path) or '.')
  temporary = f'{path}.tmp-{os.getpid()}'
  with tf.io.gfile.GFile(temporary, 'w') as f:
    json.dump(value, f, indent=2, sort_keys=True)
  tf.io.gfile.rename(temporary, path, overwrite=True)


def build_strategy(config: Config):
  """TPUStrategy, MultiWorkerMirroredStrategy (TF_CONFIG with several workers) or Mirrored."""
  if config.use_tpu:
    try:
      resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
          tpu=config.tpu_name or config.master, zone=config.tpu_zone, project=config.gcp_project)
      tf.config.experimental_connect_to_cluster(resolver)
      topology = tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, OSError, tf.errors.OpError) as error:
      raise TrainingError(f'no TPU reachable ({str(error).strip().splitlines()[0]}); '
                          'pass --use_tpu=false to train on GPUs or the CPU') from None
    logging.info('TPU topology: %d tasks, %d TPUs per task', topology.num_tasks,
                 topology.num_tpus_per_task)
    return tf.distribute.TPUStrategy(resolver)
  cluster = json.loads(os.environ.get('TF_CONFIG', '{}')).get('cluster', {})
  multi_worker = len(cluster.get('worker', [])) + len(cluster.get('chief', [])) > 1
  kind = 'multi_worker' if multi_worker else 'mirrored'
  # One strategy per process: a second Mirrored strategy reuses the first one's collective
  # instance keys and its all-reduces (sync BN) then fail, e.g. on a second run() in a notebook.
  if kind not in _STRATEGIES:
    _STRATEGIES[kind] = (tf.distribute.MultiWorkerMirroredStrategy() if multi_worker
                         else tf.distribute.MirroredStrategy())
  strategy = _STRATEGIES[kind]
  logging.info('Running on %d replica(s) with %s', strategy.num_replicas_in_sync,
               type(strategy).__name__)
  return strategy


class Experiment:
  """One model_dir: dataset, model, and the train / evaluate operations of run.py."""

  def __init__(self, config: Config, strategy=None):
    self.config = config.validate()
    if not config.model_dir:
      raise ValueError('--model_dir is required')
    if config.seed is not None:
      keras.utils.set_random_seed(config.seed)
    self.source = get_source(config.dataset, config.data_dir, config.skip_corrupt_images,
                             config.image_size)
    self.num_train_examples = self.source.num_examples(config.train_split)
    self.train_steps = config.total_train_steps(self.num_train_examples)
    self.steps_per_loop = config.steps_per_loop(self.num_train_examples)
    logging.info('# train examples: %d, # train steps: %d, steps per loop: %d',
                 self.num_train_examples, self.train_steps, self.steps_per_loop)
    warmup = config.warmup_steps(self.num_train_examples)
    if warmup >= self.train_steps and config.mode != 'eval':
      logging.warning('Warm-up (%d steps) does not end before training does (%d steps): the '
                      'learning rate never reaches its peak (K22).', warmup, self.train_steps)
    self.strategy = strategy or build_strategy(config)
    with self.strategy.scope():
      self.model: SimCLRModel = build_model(self.source.num_classes, config)
      self.model.create_variables()
    tf.io.gfile.makedirs(config.model_dir)

  def distributed_dataset(self, is_training: bool):
    """The per-replica training (augmented, repeated) or evaluation pipeline of this config."""
    config = self.config
    return build_distributed_dataset(
        self.source, config.train_batch_size if is_training else config.eval_batch_size,
        is_training, self.strategy,
        split=config.train_split if is_training else config.eval_split,
        train_mode=config.train_mode, image_size=config.image_size,
        color_jitter_strength=config.color_jitter_strength if is_training else 0.,
        cache_dataset=config.cache_dataset, seed=config.seed)

  # --- training --------------------------------------------------------------------------------
  def train(self):
    """Trains to exactly `train_steps`, resuming from model_dir's latest checkpoint if any."""
    config, strategy, model = self.config, self.strategy, self.model
    write_json(os.path.join(config.model_dir, 'config.json'), config.to_dict())
    dataset = self.distributed_dataset(is_training=True)
    with strategy.scope():
      schedule = WarmUpAndCosineDecay.from_config(config, self.num_train_examples)
      optimizer = build_optimizer(config.optimizer, schedule, config.momentum,
                                  config.weight_decay)
      metrics = TrainMetrics(config.train_mode, config.lineareval_while_pretraining)
      # Reading `iterations` here also creates the legacy optimizer's step counter in the
      # strategy scope; created lazily inside the distributed step it would fail.
      checkpoint = tf.train.Checkpoint(model=model, global_step=optimizer.iterations,
                                       optimizer=optimizer)
      manager = tf.train.CheckpointManager(checkpoint, config.model_dir,
                                           max_to_keep=config.keep_checkpoint_max)
      self._restore_or_initialise(checkpoint, manager)

    train_loop = self._train_loop_function(optimizer, metrics)
    summary_writer = tf.summary.create_file_writer(config.model_dir)
    iterator = iter(dataset)
    step = int(optimizer.iterations.numpy())
    start_step = step
    start_time = time.time()
    while step < self.train_steps:
      block = min(self.steps_per_loop, self.train_steps - step)  # no overshoot (K8)
      block_start = time.time()
      with summary_writer.as_default():
        train_loop(iterator, tf.constant(block, tf.int32))
      step = int(optimizer.iterations.numpy())
      results = metrics.results()
      if not all(math.isfinite(v) for v in results.values()):
        raise TrainingError(
            f'loss is not finite at step {step} ({_format(results)}); not saving this state. '
            f'The last checkpoint ({manager.latest_checkpoint or "none"}) is kept: lower '
            '--learning_rate or check the data')
      manager.save(checkpoint_number=step)
      learning_rate = float(schedule(step))  # schedule at the global step (training.md §3.2)
      self._log_progress(step, block, time.time() - block_start, step - start_step,
                         time.time() - start_time, learning_rate, results)
      with summary_writer.as_default():
        for tag, value in results.items():
          tf.summary.scalar(tag, value, step=step)
        tf.summary.scalar('learning_rate', learning_rate, step=step)
      summary_writer.flush()
      metrics.reset()
    logging.info('Training complete: step %d of %d.', step, self.train_steps)
    return manager.latest_checkpoint

  def _restore_or_initialise(self, checkpoint, manager):
    config, model = self.config, self.model
    if manager.latest_checkpoint:  # resume: model, step and optimizer state
      ckpt_lib.restore_training_state(checkpoint, model, manager.latest_checkpoint)
      logging.info('Resumed from %s', manager.latest_checkpoint)
    elif config.checkpoint:  # fresh start from other weights: the model only
      prefix, _ = ckpt_lib.restore_initial_weights(model, config.checkpoint)
      logging.info('Initialised the model from %s', prefix)
      if config.zero_init_logits_layer and model.has_supervised_head:
        for variable in model.supervised_head.trainable_weights:
          variable.assign(tf.zeros_like(variable))
        logging.info('Zero-initialised the supervised head.')

  def _train_loop_function(self, optimizer, metrics):
    config, strategy, model = self.config, self.strategy, self.model
    steps_per_loop = self.steps_per_loop
    pretrain = config.train_mode == 'pretrain'

    def single_step(images, labels):
      with tf.GradientTape() as tape:
        should_record = tf.equal((optimizer.iterations + 1) % steps_per_loop, 0)
        with tf.summary.record_if(should_record):
          tf.summary.image('image', images[:, :, :, :3], step=optimizer.iterations + 1)
        projection, logits = model(images, training=True)
        loss = tf.constant(0.)
        if projection is not None:
          con_loss, logits_con, labels_con = contrastive_loss(
              projection, hidden_norm=config.hidden_norm, temperature=config.temperature,
              strategy=strategy)
          loss += con_loss
          metrics.update_contrastive(con_loss, logits_con, labels_con)
        if logits is not None:
          if pretrain:  # the linear-eval head classifies both views
            labels = tf.concat([labels, labels], 0)
          sup_loss = supervised_loss(labels, logits)
          loss += sup_loss
          metrics.update_supervised(sup_loss, labels, logits)
        decay = weight_decay_loss(model.trainable_variables, config.optimizer,
                                  config.weight_decay)
        loss += decay
        metrics.update_total(decay, loss)
        loss /= strategy.num_replicas_in_sync  # gradients are summed across replicas
      gradients = tape.gradient(loss, model.trainable_variables)
      optimizer.apply_gradients(zip(gradients, model.trainable_variables))

    @tf.function
    def train_loop(iterator, num_steps):
      for _ in tf.range(num_steps):
        with tf.name_scope(''):  # keep `while/` out of names of any variable created here
          images, labels = next(iterator)
          strategy.run(single_step, (images, labels))

    return train_loop

  def _log_progress(self, step, block, block_seconds, steps_done, seconds, learning_rate,
                    results):
    images_per_second = block * self.config.train_batch_size / max(block_seconds, 1e-9)
    eta = (self.train_steps - step) * seconds / max(steps_done, 1)
    logging.info('step %d/%d  %s  lr %.4g  %.1f images/s  ETA %s', step, self.train_steps,
                 _format(results), learning_rate, images_per_second, _duration(eta))

  # --- evaluation ------------------------------------------------------------------------------
  @property
  def can_evaluate(self):
    return self.model.has_supervised_head

  def evaluate(self, checkpoint_path: str) -> Optional[dict]:
    """Top-1/top-5 of the supervised head on the eval split; writes results and a SavedModel."""
    config, strategy, model = self.config, self.strategy, self.model
    if not self.can_evaluate:
      logging.info('Nothing to evaluate: pretraining without a linear-eval head. Exporting only.')
      self.export(checkpoint_path)
      return None
    num_eval_examples = self.source.num_examples(config.eval_split)
    eval_steps = config.total_eval_steps(num_eval_examples)
    dataset = self.distributed_dataset(is_training=False)
    with strategy.scope():
      metrics = EvalMetrics()
      prefix, global_step = ckpt_lib.restore_for_evaluation(model, checkpoint_path)
    logging.info('Evaluating %s (step %d) on %d steps', prefix, global_step, eval_steps)

    def eval_step(images, labels):
      _, logits = model(images, training=False)
      metrics.update(labels, logits, weight_decay_loss(model.trainable_variables,
                                                       config.optimizer, config.weight_decay))

    @tf.function
    def run_eval_step(iterator):
      strategy.run(eval_step, next(iterator))

    iterator = iter(dataset)
    for index in range(eval_steps):
      try:
        run_eval_step(iterator)
      except tf.errors.OutOfRangeError:
        logging.warning('Eval split exhausted after %d of %d steps.', index, eval_steps)
        break
    result = metrics.results()
    summary_writer = tf.summary.create_file_writer(config.model_dir)
    with summary_writer.as_default():
      for tag, value in result.items():
        tf.summary.scalar(tag, value, step=global_step)
    summary_writer.flush()
    result['global_step'] = float(global_step)  # a float, like the reference (K28)
    logging.info('Evaluation at step %d: %s', global_step, _format(result))
    write_json(os.path.join(config.model_dir, f'result_{global_step}.json'), result)
    write_json(os.path.join(config.model_dir, 'result.json'), result)
    self._export(global_step)
    return result

  def export(self, checkpoint_path):
    """Exports the SavedModel of a checkpoint (model_dir/saved_model/<step>)."""
    _, global_step = ckpt_lib.restore_for_evaluation(self.model, checkpoint_path)
    self._export(global_step)

  def _export(self, global_step):
    from simclr_tf2.export import export_for_step  # pylint: disable=import-outside-toplevel
    path = export_for_step(self.model, self.config.model_dir, global_step,
                           self.config.keep_hub_module_max)
    logging.info('Exported SavedModel to %s', path)

  def evaluate_continuously(self):
    """mode=eval: evaluates each new checkpoint until one reaches train_steps (K9 fixed)."""
    for path in tf.train.checkpoints_iterator(self.config.model_dir,
                                              min_interval_secs=EVAL_POLL_SECONDS,
                                              timeout=self.config.eval_timeout):
      try:
        result = self.evaluate(path)
      except (tf.errors.NotFoundError, ckpt_lib.CheckpointError) as error:
        if tf.io.gfile.exists(path + '.index'):
          raise
        logging.warning('Checkpoint %s vanished before evaluation (%s); skipping.', path,
                        type(error).__name__)
        continue
      step = int(result['global_step']) if result else _step_of(path)
      if step >= self.train_steps:
        logging.info('Eval complete: step %d >= train_steps %d.', step, self.train_steps)
        return result
    logging.warning('No new checkpoint within --eval_timeout=%s s; stopping.',
                    self.config.eval_timeout)
    return None


def _step_of(path):
  return int(path.rsplit('-', 1)[-1])


def _format(values):
  return ', '.join(f'{name} {value:.4g}' for name, value in values.items())


def _duration(seconds):
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}:{minutes:02d}:{seconds:02d}'


def run(config: Config, strategy=None) -> Optional[dict]:
  """Runs `config.mode` and returns the last evaluation result (None if none)."""
  experiment = Experiment(config, strategy)
  if config.mode == 'eval':
    if not experiment.can_evaluate:
      raise ValueError('mode=eval needs a supervised head: use train_mode=finetune or '
                       '--lineareval_while_pretraining=true')
    return experiment.evaluate_continuously()
  latest = experiment.train()
  if config.mode == 'train_then_eval':
    return experiment.evaluate(latest)
  experiment.export(latest)  # the reference only exported after evaluations (K10, upstream #134)
  return None
