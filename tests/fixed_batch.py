"""Training steps on one fixed global batch, driven as a user's own loop would drive a task
(docs/api.md): the helper of the tests that compare a run under two strategies."""

import tensorflow as tf

DIGITS_TRAIN_EXAMPLES = 1437  # the schedule's epoch length (digits' training split)


def train_on_fixed_batch(task, images, labels, steps=1, build_optimizer=True):
  """Builds the task's optimizer (build_optimizer=False: the caller did), then runs `steps` train_steps on
  (images, labels) as the global batch under the task's strategy; returns (train metrics,
  model weights)."""
  strategy = task.strategy
  if build_optimizer:
    task.build_optimizer(DIGITS_TRAIN_EXAMPLES)
  assert int(task.global_step.numpy()) == 0

  @tf.function
  def train_one_step(iterator):
    strategy.run(task.train_step, next(iterator))

  dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(len(images)).repeat()
  iterator = iter(strategy.experimental_distribute_dataset(dataset))
  for _ in range(steps):
    train_one_step(iterator)
  assert int(task.global_step.numpy()) == steps
  return task.train_metrics.results(), task.model.get_weights()
