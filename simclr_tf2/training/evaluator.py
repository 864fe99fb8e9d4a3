"""Evaluation of checkpoints (top-1/top-5 of the supervised head), result files and exports.

  Evaluator(task, model_dir, dataset_fn, eval_steps)   evaluate one checkpoint, or every one
                                                        that appears in model_dir (mode=eval,
                                                        K9 fixed); write into output_dir
  export_model(task, model_dir, global_step)            SavedModel model_dir/saved_model/<step>
"""

import logging
import os
import time
from typing import Callable, Iterable, Optional

import tensorflow as tf

from simclr_tf2 import console
from simclr_tf2.distribute import is_chief, scratch_dir
from simclr_tf2.errors import os_errors
from simclr_tf2.model_dir import SAVED_MODEL_SUBDIR, numbered_checkpoints, write_json
from simclr_tf2.network import checkpoint as ckpt_lib
from simclr_tf2.network.export import export_for_step
from simclr_tf2.summaries import summary_writer_for, write_scalars
from simclr_tf2.training.callbacks import format_metrics
from simclr_tf2.training.task import SimCLRTask

EVAL_POLL_SECONDS = 15


class Evaluator:
  """Evaluates checkpoints with the task's eval_step; writes summaries, result JSON files and
  (optionally) a SavedModel of every evaluated checkpoint into `output_dir` (default: the
  `model_dir` whose checkpoints evaluate_continuously reads)."""

  def __init__(self, task: SimCLRTask, model_dir: str, dataset_fn: Callable[[], Iterable],
               eval_steps: int, export: bool = True, output_dir: Optional[str] = None,
               progress_bar: bool = False):
    if not task.can_evaluate:
      raise ValueError('nothing to evaluate: the model has no supervised head (use '
                       'train_mode=finetune or --lineareval_while_pretraining=true)')
    self.task = task
    self.model_dir = model_dir
    self.dataset_fn = dataset_fn
    self.eval_steps = eval_steps
    self.export = export
    self.output_dir = output_dir or model_dir
    self.progress_bar = progress_bar  # the console's progress line (console.Progress)
    self.saved_model = None
    self.evaluated = []  # checkpoint prefixes evaluated, in order
    self.skipped = []  # (prefix, reason) of checkpoints that could not be evaluated
    strategy = task.strategy

    @tf.function
    def eval_one_batch(iterator):
      strategy.run(task.eval_step, next(iterator))

    self._eval_one_batch = eval_one_batch

  def evaluate(self, checkpoint_path: str) -> dict:
    """Top-1/top-5 of the supervised head on `eval_steps` batches of the eval split, for a
    checkpoint or a SavedModel (one whose step is unknown counts as step 0)."""
    task = self.task
    with task.strategy.scope():
      prefix, global_step = ckpt_lib.restore_for_evaluation(
          task.model, checkpoint_path, task.config.allow_non_finite_checkpoint)
    global_step = global_step or 0
    logging.info('Evaluating %s (step %d) on %d steps', prefix, global_step, self.eval_steps)
    task.eval_metrics.reset()
    iterator = iter(self.dataset_fn())
    progress = None
    if self.progress_bar:
      progress = console.Progress(self.eval_steps, 'eval',
                                  images_per_step=task.config.eval_batch_size)
    # On a pipe each update is a line: about ten of them.
    update_every = 1 if progress is None or progress.interactive else max(self.eval_steps // 10, 1)
    for index in range(self.eval_steps):
      try:
        self._eval_one_batch(iterator)
      except tf.errors.OutOfRangeError:
        logging.warning('Eval split exhausted after %d of %d steps.', index, self.eval_steps)
        break
      if progress and ((index + 1) % update_every == 0 or index + 1 == self.eval_steps):
        progress.update(index + 1, **{'top-1': float(task.eval_metrics.top_1_accuracy.result())})
    if progress:
      progress.close()
    result = task.eval_metrics.results()
    write_scalars(summary_writer_for(task.strategy, self.output_dir), result, global_step)
    result['global_step'] = float(global_step)  # a float, like the reference (K28)
    logging.info('Evaluation at step %d: %s', global_step, format_metrics(result))
    if is_chief(task.strategy):
      write_json(os.path.join(self.output_dir, f'result_{global_step}.json'), result)
      write_json(os.path.join(self.output_dir, 'result.json'), result)
    if self.export:
      self.saved_model = export_model(task, self.output_dir, global_step)
    return result

  def evaluate_continuously(self, train_steps: int, timeout: Optional[float],
                            poll_seconds: float = EVAL_POLL_SECONDS) -> Optional[dict]:
    """mode=eval: evaluates every checkpoint that exists or appears, oldest first, until one
    reaches train_steps or none appears for `timeout` seconds (K9 fixed).

    Checkpoints deleted (keep_checkpoint_max) before their turn are skipped and listed.
    """
    result, last_step, waited = None, -1, 0.
    while True:
      pending = [(step, prefix) for step, prefix in numbered_checkpoints(self.model_dir, 'ckpt')
                 if step > last_step]
      if not pending:
        if timeout is not None and waited >= timeout:
          logging.warning('No new checkpoint within --eval_timeout=%s s; stopping.', timeout)
          break
        time.sleep(poll_seconds)
        waited += poll_seconds
        continue
      waited = 0.
      for step, prefix in pending:
        last_step = step
        try:
          result = self.evaluate(prefix)
        except (tf.errors.NotFoundError, ckpt_lib.CheckpointError) as error:
          if tf.io.gfile.exists(prefix + '.index'):
            raise
          logging.warning('Checkpoint %s was deleted before evaluation (%s, e.g. by '
                          '--keep_checkpoint_max of the training run); skipping it.', prefix,
                          type(error).__name__)
          self.skipped.append((prefix, 'deleted before evaluation'))
          continue
        self.evaluated.append(prefix)
        if step >= train_steps:
          logging.info('Eval complete: step %d >= train_steps %d.', step, train_steps)
          self._log_summary()
          return result
    self._log_summary()
    return result

  def _log_summary(self):
    logging.info('Evaluated %d checkpoint(s)%s.', len(self.evaluated),
                 f'; skipped {", ".join(os.path.basename(p) for p, _ in self.skipped)} (deleted '
                 'before evaluation)' if self.skipped else '')


def export_model(task: SimCLRTask, model_dir: str, global_step: int) -> Optional[str]:
  """The task's model as SavedModel model_dir/saved_model/<global_step>; None on a non-chief
  worker, which exports into a deleted scratch directory (see scratch_dir)."""
  ckpt_lib.assert_all_finite(task.model.variables, global_step, None, 'exported')
  with scratch_dir(task.strategy, model_dir) as directory:
    with os_errors('export SavedModel to', os.path.join(directory, SAVED_MODEL_SUBDIR,
                                                          str(global_step))):
      path = export_for_step(task.model, directory, global_step,
                             task.config.keep_hub_module_max)
  if not is_chief(task.strategy):
    return None
  logging.info('Exported SavedModel to %s', path)
  return path
