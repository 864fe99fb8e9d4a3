"""Hooks the Trainer calls around its loop: divergence guard, checkpoints, summaries, progress.

A callback sees the trainer (its task, model_dir, summary writer, checkpoints) and, after every
block of `steps_per_loop` steps, the global step and the block's metrics. `Trainer` runs the
callbacks in list order, so a guard placed before the checkpoint saver stops a bad state from
being saved. Subclass `Callback` for your own (e.g. early stopping, a custom monitor).

TensorFlow-free at import time (entry points import it before quieting TensorFlow's logs).
"""

import logging
import math
import time

from simclr_tf2 import console
from simclr_tf2.errors import TrainingError
from simclr_tf2.summaries import write_scalars


class Callback:
  """Does nothing; override what you need."""

  def on_train_begin(self, trainer):
    """Before the first block, after the state was restored (trainer.step is the start)."""

  def on_block_end(self, trainer, step: int, logs: dict):
    """After each block; `logs` = {metric tag: float} of the block, and `learning_rate`."""

  def on_train_end(self, trainer, step: int):
    """After the last block (train_steps reached)."""


# In a block's logs under mixed_float16 only: the dynamic loss scale after the block, and how
# many of its steps dynamic loss scaling skipped (their gradients overflowed float16).
LOSS_SCALE_TAG = 'train/loss_scale'
SKIPPED_STEPS_TAG = 'train/skipped_steps'
# Keras' dynamic loss scale never falls below 1. Gradients that overflow on the way down to it
# are about as large as float16 can hold: the run diverged (from the initial 2**15, 15
# consecutive skipped steps get there).
MIN_LOSS_SCALE = 1.0


class DivergenceGuard(Callback):
  """Stops training when a metric (a loss) is not finite, or (mixed_float16) when steps are
  still skipped as the loss scale reaches its minimum, before anything saves that state. Steps
  skipped at a larger scale are not divergence: dynamic loss scaling recovers from them (they
  are left out of the losses and counted in `train/skipped_steps`). (Trainer.save_checkpoint
  itself refuses non-finite variables.)"""

  def on_block_end(self, trainer, step, logs):
    keep = (f'The last checkpoint ({trainer.latest_checkpoint or "none"}) is kept: lower '
            '--learning_rate')
    if not all(math.isfinite(value) for value in logs.values()):
      raise TrainingError(f'loss is not finite at step {step} ({format_metrics(logs)}); not '
                          f'saving this state. {keep} or check the data')
    if (logs.get(SKIPPED_STEPS_TAG, 0) > 0
        and logs.get(LOSS_SCALE_TAG, math.inf) <= MIN_LOSS_SCALE):
      raise TrainingError(
          f'float16 gradients still overflow with the loss scale down to its minimum at step '
          f'{step} ({format_metrics(logs)}); not saving this state. {keep} or use '
          '--precision=mixed_bfloat16 or float32')


class CheckpointSaver(Callback):
  """Saves a checkpoint named by the global step after every block."""

  def on_block_end(self, trainer, step, logs):
    trainer.save_checkpoint(step)


class ScalarSummaries(Callback):
  """Writes the block's metrics and learning rate as TensorBoard scalars at the global step."""

  def on_block_end(self, trainer, step, logs):
    write_scalars(trainer.summary_writer, logs, step)


class ProgressLogger(Callback):
  """One log line per block: step, metrics, learning rate, images/s and ETA."""

  def __init__(self, batch_size: int):
    self.batch_size = batch_size
    self._start_step = self._start_time = self._block_start = self._last_step = None

  def on_train_begin(self, trainer):
    self._start_step = self._last_step = trainer.step
    self._start_time = self._block_start = time.time()

  def on_block_end(self, trainer, step, logs):
    now = time.time()
    images_per_second = (step - self._last_step) * self.batch_size / max(
        now - self._block_start, 1e-9)
    eta = (trainer.train_steps - step) * (now - self._start_time) / max(
        step - self._start_step, 1)
    metrics = {tag: value for tag, value in logs.items() if tag != 'learning_rate'}
    logging.info('step %d/%d  %s  lr %.4g  %.1f images/s  ETA %s', step, trainer.train_steps,
                 format_metrics(metrics), logs.get('learning_rate', float('nan')),
                 images_per_second, format_duration(eta))
    self._last_step, self._block_start = step, now


class ProgressBar(Callback):
  """The console's live progress line (simclr_tf2.console.Progress): steps, metrics, images/s
  and ETA; a plain line per block when the output is not a terminal. Entry points add it in
  quiet mode, where ProgressLogger's lines go to the log file only."""

  def __init__(self, batch_size: int, title: str = 'train'):
    self.batch_size = batch_size
    self.title = title
    self._progress = None

  def on_train_begin(self, trainer):
    self._progress = console.Progress(trainer.train_steps, self.title,
                                      images_per_step=self.batch_size)

  def on_block_end(self, trainer, step, logs):
    self._progress.update(step, **headline_metrics(logs))

  def on_train_end(self, trainer, step):
    self._progress.close()


# What a progress line shows, under short names (every metric still goes to TensorBoard/log).
HEADLINE_METRICS = {'train/total_loss': 'loss', 'train/contrast_acc': 'contrast acc',
                    'train/supervised_acc': 'supervised acc', 'knn/top_1_accuracy': 'kNN top-1',
                    'learning_rate': 'lr', SKIPPED_STEPS_TAG: 'skipped steps'}


def headline_metrics(logs: dict) -> dict:
  return {short: logs[tag] for tag, short in HEADLINE_METRICS.items() if tag in logs}


def format_metrics(values: dict) -> str:
  return ', '.join(f'{name} {value:.4g}' for name, value in values.items())


def format_duration(seconds: float) -> str:
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}:{minutes:02d}:{seconds:02d}'
