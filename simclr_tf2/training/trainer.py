"""The training loop: blocks of steps of a SimCLRTask inside one tf.function, then callbacks.

  Trainer(task, model_dir, callbacks)   restore or initialise, fit to train_steps, save
  default_callbacks(config)             guard, checkpoints, summaries, kNN monitor, progress
"""

import logging
import os
from typing import Optional, Sequence

import tensorflow as tf

from simclr_tf2.config import Config
from simclr_tf2.data import get_source
from simclr_tf2.distribute import is_chief, scratch_dir
from simclr_tf2.errors import os_errors
from simclr_tf2.network import checkpoint as ckpt_lib
from simclr_tf2.summaries import summary_writer_for
from simclr_tf2.training.callbacks import (LOSS_SCALE_TAG, Callback, CheckpointSaver,
                                           DivergenceGuard, ProgressBar, ProgressLogger,
                                           ScalarSummaries)
from simclr_tf2.training.knn_monitor import KnnMonitor
from simclr_tf2.training.task import SimCLRTask


def default_callbacks(config: Config, source=None, progress_bar: bool = False) -> list:
  """Guard first (nothing non-finite is saved), then checkpoint, summaries, the kNN monitor
  (`config.knn_monitor_steps` > 0; `source`: the run's data source, else built from config) and
  progress: log lines, plus the console's progress bar if `progress_bar`."""
  callbacks = [DivergenceGuard(), CheckpointSaver(), ScalarSummaries()]
  if config.knn_monitor_steps:
    source = source or get_source(config.dataset, config.data_dir, config.skip_corrupt_images,
                                  config.image_size)
    callbacks.append(KnnMonitor.from_config(config, source))
  callbacks.append(ProgressLogger(config.train_batch_size))
  if progress_bar:
    callbacks.append(ProgressBar(config.train_batch_size))
  return callbacks


class Trainer:
  """Runs a SimCLRTask's train_step in blocks of steps inside one tf.function per block.

  Owns the checkpoints of `model_dir` (`ckpt-<step>`, official layout) and its summary writer;
  on a non-chief worker of a multi-worker strategy it writes neither there (see scratch_dir).
  `fit()` resumes from the newest checkpoint of model_dir, else initialises the model from
  `config.checkpoint` (when set), then trains to exactly `train_steps`.
  """

  def __init__(self, task: SimCLRTask, model_dir: str,
               callbacks: Optional[Sequence[Callback]] = None):
    if task.optimizer is None:
      raise ValueError('call task.build_optimizer(num_train_examples) before Trainer(task, ...)')
    self.task = task
    self.model_dir = model_dir
    self.callbacks = list(default_callbacks(task.config) if callbacks is None else callbacks)
    self.train_steps = None
    self.is_chief = is_chief(task.strategy)
    tf.io.gfile.makedirs(model_dir)
    with task.strategy.scope():
      self.checkpoint = task.checkpoint()
    self.checkpoint_manager = None
    if self.is_chief:
      self.checkpoint_manager = self._checkpoint_manager(model_dir)
    self._summary_writer = None
    self._restored = False
    self._train_loop = None
    self._steps_per_loop = 1

  @property
  def summary_writer(self):
    """The TensorBoard writer of model_dir, created on first use (a failed restore leaves no
    event file behind)."""
    if self._summary_writer is None:
      self._summary_writer = summary_writer_for(self.task.strategy, self.model_dir)
    return self._summary_writer

  @property
  def step(self) -> int:
    return int(self.task.global_step.numpy())

  @property
  def latest_checkpoint(self) -> Optional[str]:
    """The newest checkpoint of model_dir (every worker resumes from the chief's)."""
    if self.is_chief:
      return self.checkpoint_manager.latest_checkpoint
    return tf.train.latest_checkpoint(self.model_dir)

  def restore(self) -> Optional[str]:
    """Resumes model, step and optimizer from model_dir, else loads `config.checkpoint` into
    the model only (zeroing the supervised head if asked). Returns the path used, or None."""
    self._restored = True
    config, model = self.task.config, self.task.model
    with self.task.strategy.scope():
      if self.latest_checkpoint:
        ckpt_lib.check_optimizer_matches(self.latest_checkpoint, config.optimizer)
        ckpt_lib.restore_training_state(self.checkpoint, model, self.latest_checkpoint,
                                        config.allow_non_finite_checkpoint)
        logging.info('Resumed from %s', self.latest_checkpoint)
        return self.latest_checkpoint
      if not config.checkpoint:
        return None
      prefix, _ = ckpt_lib.restore_initial_weights(model, config.checkpoint,
                                                   config.allow_non_finite_checkpoint)
      logging.info('Initialised the model from %s', prefix)
      if config.zero_init_logits_layer and model.has_supervised_head:  # K5
        for variable in model.supervised_head.trainable_weights:
          variable.assign(tf.zeros_like(variable))
        logging.info('Zero-initialised the supervised head.')
      return prefix

  def save_checkpoint(self, step: int) -> str:
    """Saves ckpt-<step>; refuses (TrainingError) variables holding NaN/inf: the last update
    of a block can diverge after the block's losses were computed. A non-chief worker saves
    into a scratch directory (every worker must take part in a save)."""
    ckpt_lib.assert_all_finite(self.task.model.variables, step, self.latest_checkpoint)
    if self.is_chief:
      with os_errors('save checkpoint', os.path.join(self.model_dir, f'ckpt-{step}')):
        return self.checkpoint_manager.save(checkpoint_number=step)
    with scratch_dir(self.task.strategy, self.model_dir) as directory:
      self._checkpoint_manager(directory).save(checkpoint_number=step)
    return self.latest_checkpoint

  def _checkpoint_manager(self, directory):
    with self.task.strategy.scope():
      return tf.train.CheckpointManager(self.checkpoint, directory,
                                        max_to_keep=self.task.config.keep_checkpoint_max)

  def train_blocks(self, iterator, num_steps: int) -> None:
    """Runs `num_steps` training steps on `iterator` in one call of the compiled loop."""
    if self._train_loop is None:
      self._train_loop = self._build_train_loop()
    with self.summary_writer.as_default():
      self._train_loop(iterator, tf.constant(num_steps, tf.int32))

  def fit(self, dataset, train_steps: int, steps_per_loop: int) -> Optional[str]:
    """Trains to exactly `train_steps` (no overshoot, K8); callbacks run after every block of
    `steps_per_loop` steps. Returns the latest checkpoint."""
    if steps_per_loop < 1:
      raise ValueError(f'steps_per_loop must be >= 1, got {steps_per_loop}')
    self.train_steps = train_steps
    if steps_per_loop != self._steps_per_loop:  # the compiled loop's image-summary period
      self._steps_per_loop, self._train_loop = steps_per_loop, None
    if not self._restored:
      self.restore()
    task = self.task
    iterator = iter(dataset)
    step = self.step
    for callback in self.callbacks:
      callback.on_train_begin(self)
    while step < train_steps:
      self.train_blocks(iterator, min(steps_per_loop, train_steps - step))
      step = self.step
      logs = task.train_metrics.results()
      loss_scale = task.loss_scale
      if loss_scale is not None:
        logs[LOSS_SCALE_TAG] = loss_scale
      # The schedule at the global step, i.e. the rate of the next update (as the reference).
      logs['learning_rate'] = float(task.schedule(step))
      for callback in self.callbacks:
        callback.on_block_end(self, step, logs)
      task.train_metrics.reset()
    for callback in self.callbacks:
      callback.on_train_end(self, step)
    logging.info('Training complete: step %d of %d.', step, train_steps)
    return self.latest_checkpoint

  def _build_train_loop(self):
    task, strategy = self.task, self.task.strategy
    steps_per_loop = self._steps_per_loop

    def step_with_image_summary(images, labels):
      # The first view of the block's last batch, like the reference's image summary.
      with tf.summary.record_if(tf.equal((task.global_step + 1) % steps_per_loop, 0)):
        tf.summary.image('image', images[:, :, :, :3], step=task.global_step + 1)
      task.train_step(images, labels)

    @tf.function
    def train_loop(iterator, num_steps):
      for _ in tf.range(num_steps):
        with tf.name_scope(''):  # keep `while/` out of names of any variable created here
          images, labels = next(iterator)
          strategy.run(step_with_image_summary, (images, labels))

    return train_loop
