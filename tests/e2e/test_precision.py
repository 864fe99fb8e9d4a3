"""--precision and --jit_compile: layers compute in 16 bits while variables, batch-norm
statistics, the optimizer, the losses and the checkpoint layout stay those of float32."""

import gc
import logging

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.network.checkpoint import object_keys
from simclr_tf2.config import Config
from simclr_tf2.training.task import SimCLRTask
from simclr_tf2.training.callbacks import Callback, CheckpointSaver, DivergenceGuard
from simclr_tf2.errors import TrainingError
from simclr_tf2.training.trainer import Trainer

NUM_EXAMPLES = 1000
BATCH = 8


def tiny(**overrides):
  values = dict(dataset='digits', resnet_depth=18, image_size=8, train_batch_size=BATCH,
                use_tpu=False, use_blur=False, seed=0, warmup_epochs=0, learning_rate=1.0)
  values.update(overrides)
  return Config(**values)


def batch():
  rng = np.random.default_rng(0)
  images = rng.uniform(size=[BATCH, 8, 8, 6]).astype(np.float32)
  labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, BATCH)]
  return images, labels


def one_step(task, initial_weights=None, global_step=0):
  """One applied train_step on the fixed batch under the default strategy, from `global_step`;
  returns the metrics. Under mixed_float16 the steps that the initial loss scale makes overflow
  come first: they change no weight, advance the global step and count as skipped."""
  task.build_optimizer(NUM_EXAMPLES)
  if initial_weights is not None:
    task.model.set_weights(initial_weights)
  task.optimizer.iterations.assign(global_step)
  step = tf.function(task.train_step)
  for _ in range(16):  # the loss scale halves from 2**15 to its minimum 1
    step(*map(tf.constant, batch()))
    if 'train/total_loss' in task.train_metrics.results():
      return task.train_metrics.results()
  raise AssertionError('every step was skipped')


@pytest.mark.parametrize('precision', ['mixed_bfloat16', 'mixed_float16'])
def test_mixed_precision_keeps_float32_variables_keys_and_outputs(precision):
  reference = SimCLRTask(tiny(), 10)
  mixed = SimCLRTask(tiny(precision=precision), 10)
  reference_keys = {k: v.shape for k, v in object_keys(model=reference.model).items()}
  mixed_variables = object_keys(model=mixed.model)
  assert {k: v.shape for k, v in mixed_variables.items()} == reference_keys
  assert {v.dtype for v in mixed_variables.values()} == {tf.float32}
  images = tf.random.uniform([2, 8, 8, 3], seed=1)
  mixed.model.set_weights(reference.model.get_weights())
  reference_out = reference.model.call_with_endpoints(images)
  mixed_out = mixed.model.call_with_endpoints(images)
  assert mixed.model.resnet_model.compute_dtype == precision.split('_')[1]
  for name, value in reference_out.items():
    assert mixed_out[name].dtype == tf.float32, name
  # 16-bit compute: close to float32, not equal (bfloat16 keeps 8 bits of mantissa).
  np.testing.assert_allclose(mixed_out['final_avg_pool'], reference_out['final_avg_pool'],
                             rtol=0.1, atol=0.1)
  assert not np.array_equal(mixed_out['final_avg_pool'], reference_out['final_avg_pool'])


# bfloat16 steps are emulated slowly on CPUs; float16 (with loss scaling) is the fast check.
@pytest.mark.parametrize('precision', [pytest.param('mixed_bfloat16', marks=pytest.mark.slow),
                                       'mixed_float16'])
def test_mixed_precision_step_is_close_to_float32_and_its_checkpoint_loads_in_float32(
    precision, tmp_path, caplog):
  reference = SimCLRTask(tiny(), 10)
  initial = reference.model.get_weights()
  mixed = SimCLRTask(tiny(precision=precision), 10)
  mixed_metrics = one_step(mixed, initial)
  skipped = int(mixed_metrics.pop('train/skipped_steps', 0))
  # The same update in float32: same weights, same learning rate (global step).
  reference_metrics = one_step(reference, global_step=skipped)
  for tag, value in reference_metrics.items():
    # An accuracy counts argmax hits among the BATCH images: 16-bit rounding may flip one.
    slack = 1 / BATCH + 1e-6 if tag.endswith('_acc') else 0.05
    assert mixed_metrics[tag] == pytest.approx(value, rel=0.05, abs=slack), tag
  prefix = Trainer(mixed, str(tmp_path), callbacks=[]).save_checkpoint(skipped + 1)
  restored = SimCLRTask(tiny(), 10)
  restored.build_optimizer(NUM_EXAMPLES)
  with caplog.at_level(logging.WARNING):
    assert Trainer(restored, str(tmp_path), callbacks=[]).restore() == prefix
    weights = restored.model.get_weights()
    del restored
    gc.collect()  # TensorFlow warns of unrestored values when the restore's objects are deleted
  for got, want in zip(weights, mixed.model.get_weights()):
    np.testing.assert_array_equal(got, want)
  # float16's loss scale, in the file and not in a float32 run, is dropped without a warning.
  assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_jit_compiled_step_matches_the_plain_step():
  reference = SimCLRTask(tiny(), 10)
  initial = reference.model.get_weights()
  reference_metrics = one_step(reference)
  compiled = SimCLRTask(tiny(jit_compile=True), 10)
  compiled_metrics = one_step(compiled, initial)
  for tag, value in reference_metrics.items():
    assert compiled_metrics[tag] == pytest.approx(value, rel=1e-4, abs=1e-5), tag
  for got, want in zip(compiled.model.get_weights(), reference.model.get_weights()):
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)


def test_unknown_precision_is_a_one_line_error():
  with pytest.raises(ValueError, match=r"^--precision='float16': must be one of float32, "):
    tiny(precision='float16').validate()


def test_jit_compile_with_synchronised_batch_norm_is_refused_under_a_strategy(
    two_replica_strategy):
  """The sync BN all-reduce cannot run inside the nested XLA function: a one-line error at
  construction, not a TensorFlow traceback in the first step."""
  with pytest.raises(ValueError, match='--jit_compile=true under a distribution strategy needs '
                     '--global_bn=false'):
    SimCLRTask(tiny(jit_compile=True), 10, two_replica_strategy)


class Recorder(Callback):
  """Each block's logs and whether it changed the trainable weights."""

  def __init__(self):
    self.logs, self.changed, self._weights = [], [], None

  def on_train_begin(self, trainer):
    self._weights = [v.numpy() for v in trainer.task.model.trainable_variables]

  def on_block_end(self, trainer, step, logs):
    weights = [v.numpy() for v in trainer.task.model.trainable_variables]
    self.changed.append(any(not np.array_equal(a, b) for a, b in zip(weights, self._weights)))
    self.logs.append(logs)
    self._weights = weights


def train_float16(model_dir, steps, steps_per_loop, callbacks, temperature, initial_weights):
  """mixed_float16 steps on the fixed batch. A low temperature makes the contrastive gradients
  large: scaled by the initial loss scale 2**15 they overflow float16, unscaled they do not."""
  task = SimCLRTask(tiny(precision='mixed_float16', temperature=temperature), 10)
  task.build_optimizer(NUM_EXAMPLES)
  task.model.set_weights(initial_weights)
  recorder = Recorder()
  trainer = Trainer(task, str(model_dir), callbacks=[DivergenceGuard(), *callbacks, recorder])
  dataset = tf.data.Dataset.from_tensors(tuple(map(tf.constant, batch()))).repeat()
  try:
    trainer.fit(dataset, train_steps=steps, steps_per_loop=steps_per_loop)
  finally:
    trainer.summary_writer.close()
  return recorder


def test_float16_overflow_skips_steps_without_stopping_the_run(tmp_path):
  """Issue 13: the skipped steps change no weight, halve the loss scale, are counted and left
  out of the losses; the divergence guard lets the run go on."""
  initial = SimCLRTask(tiny(), 10).model.get_weights()
  one_by_one = train_float16(tmp_path / 'blocks_of_1', 8, 1, [], 0.02, initial)
  skipped = [logs['train/skipped_steps'] for logs in one_by_one.logs]
  # How many steps overflow depends on the initial weights (4 or 5 in our runs); then it recovers.
  first_applied = skipped.index(0.)
  assert first_applied >= 2 and skipped[:first_applied] == [1.] * first_applied
  assert one_by_one.changed == [value == 0. for value in skipped]
  scales = [logs['train/loss_scale'] for logs in one_by_one.logs]
  # Each skip halves the scale from 2**15; no growth within 8 steps (Keras: after 2000).
  assert scales == [2. ** (15 - sum(skipped[:index + 1])) for index in range(len(skipped))]
  for logs in one_by_one.logs:  # a skipped step has no loss to show
    assert ('train/total_loss' in logs) == (logs['train/skipped_steps'] == 0.)

  one_block = train_float16(tmp_path / 'one_block', 8, 8, [], 0.02, initial)
  applied_losses = [logs['train/total_loss'] for logs in one_by_one.logs if 'train/total_loss'
                    in logs]
  (logs,) = one_block.logs
  assert logs['train/skipped_steps'] == sum(skipped)
  assert logs['train/total_loss'] == pytest.approx(np.mean(applied_losses), rel=1e-5)


def test_float16_overflow_at_the_minimum_loss_scale_stops_the_run(tmp_path):
  """Gradients that overflow even at loss scale 1 (Keras' floor): every step is skipped, and
  the guard stops the run once the scale is at the floor instead of running on unchanged."""
  # Blocks of 5 steps: the scale halves from 2**15 to 1 in the third; the two before are saved.
  with pytest.raises(TrainingError, match=r'float16 gradients still overflow with the loss scale '
                     r'down to its minimum at step 15 .*use --precision=mixed_bfloat16 or float32'):
    train_float16(tmp_path, 100, 5, [CheckpointSaver()], 1e-6,
                  SimCLRTask(tiny(), 10).model.get_weights())
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith('ckpt-10')


def test_float16_skipped_step_is_counted_once_on_two_replicas(two_replica_strategy):
  """The skip decision is all-reduced: both replicas skip together and the step counts once."""
  task = SimCLRTask(tiny(precision='mixed_float16', temperature=0.02), 10, two_replica_strategy)
  task.build_optimizer(NUM_EXAMPLES)
  dataset = two_replica_strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensors(tuple(map(tf.constant, batch()))).repeat())

  @tf.function
  def step(iterator):
    two_replica_strategy.run(task.train_step, next(iterator))

  step(iter(dataset))
  assert task.train_metrics.results() == {'train/skipped_steps': 1.}
  assert task.loss_scale == 2. ** 14
