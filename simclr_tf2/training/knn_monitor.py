"""A training callback: the kNN accuracy of the encoder during pretraining (`--knn_monitor_steps`).

It scores frozen features of the training model with inference.probes.knn_accuracy, the train
split as memory bank, and writes the TensorBoard scalar `knn/top_1_accuracy`.
"""

import logging
from typing import Optional

from simclr_tf2.inference.embeddings import compute_embeddings
from simclr_tf2.inference.probes import KNN_K, KNN_SCALAR, KNN_TEMPERATURE, knn_accuracy
from simclr_tf2.summaries import write_scalars
from simclr_tf2.training.callbacks import Callback


class KnnMonitor(Callback):
  """Trainer callback: every `every_n_steps` training steps, the kNN top-1 accuracy of the
  encoder (`endpoint` of the training model, inference mode) on a labeled eval split, with the
  train split as memory bank, written as the TensorBoard scalar `knn/top_1_accuracy`.

  Runs at the end of the first training block that reaches each multiple of `every_n_steps`,
  so it follows steps_per_loop granularity. The value is also added to that block's `logs`.
  """

  def __init__(self, every_n_steps: int, source, train_split: str, eval_split: str,
               batch_size: int = 256, k: int = KNN_K, temperature: float = KNN_TEMPERATURE,
               max_train_examples: Optional[int] = None,
               max_eval_examples: Optional[int] = None, endpoint: str = 'final_avg_pool'):
    if every_n_steps < 1:
      raise ValueError(f'KnnMonitor: every_n_steps={every_n_steps} must be >= 1')
    if not getattr(source, 'labeled', True):
      raise ValueError('--knn_monitor_steps needs a labeled dataset; image_folder_unlabeled has '
                       'no labels')
    self.every_n_steps = every_n_steps
    self.source = source
    self.train_split, self.eval_split = train_split, eval_split
    self.batch_size, self.k, self.temperature = batch_size, k, temperature
    self.max_train_examples, self.max_eval_examples = max_train_examples, max_eval_examples
    self.endpoint = endpoint
    self.history = []  # (step, accuracy)
    self._done = 0  # number of multiples of every_n_steps already monitored

  @classmethod
  def from_config(cls, config, source) -> 'KnnMonitor':
    """The monitor of `--knn_monitor_steps`: train split as memory bank, eval split scored."""
    return cls(config.knn_monitor_steps, source, config.train_split, config.eval_split,
               batch_size=config.eval_batch_size)

  def accuracy(self, model, strategy=None) -> float:
    bank = compute_embeddings(model, self.source, self.train_split, self.endpoint,
                              self.batch_size, self.max_train_examples, strategy)
    queries = compute_embeddings(model, self.source, self.eval_split, self.endpoint,
                                 self.batch_size, self.max_eval_examples, strategy)
    return knn_accuracy(bank[0], bank[1], queries[0], queries[1], self.k, self.temperature)

  def on_block_end(self, trainer, step, logs):
    if step // self.every_n_steps <= self._done:
      return
    self._done = step // self.every_n_steps
    accuracy = self.accuracy(trainer.task.model, trainer.task.strategy)
    write_scalars(trainer.summary_writer, {KNN_SCALAR: accuracy}, step)
    self.history.append((step, accuracy))
    if logs is not None:
      logs[KNN_SCALAR] = accuracy
    logging.info('step %d: kNN top-1 accuracy %.4f (%s -> %s)', step, accuracy,
                 self.train_split, self.eval_split)

