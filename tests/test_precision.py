"""--precision and --jit_compile: layers compute in 16 bits while variables, batch-norm
statistics, the optimizer, the losses and the checkpoint layout stay those of float32."""

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.checkpoint import object_keys
from simclr_tf2.config import Config
from simclr_tf2.task import SimCLRTask
from simclr_tf2.train import Trainer

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


def one_step(task, initial_weights=None):
  """One train_step on the fixed batch under the default strategy; returns the metrics."""
  task.build_optimizer(NUM_EXAMPLES)
  if initial_weights is not None:
    task.model.set_weights(initial_weights)
  images, labels = batch()
  tf.function(task.train_step)(tf.constant(images), tf.constant(labels))
  return task.train_metrics.results()


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
    precision, tmp_path):
  reference = SimCLRTask(tiny(), 10)
  initial = reference.model.get_weights()
  reference_metrics = one_step(reference)
  mixed = SimCLRTask(tiny(precision=precision), 10)
  mixed_metrics = one_step(mixed, initial)
  assert int(mixed.global_step.numpy()) == 1  # the step was applied, not skipped
  for tag, value in reference_metrics.items():
    assert mixed_metrics[tag] == pytest.approx(value, rel=0.05, abs=0.05), tag
  prefix = Trainer(mixed, str(tmp_path), callbacks=[]).save_checkpoint(1)
  restored = SimCLRTask(tiny(), 10)
  restored.build_optimizer(NUM_EXAMPLES)
  assert Trainer(restored, str(tmp_path), callbacks=[]).restore() == prefix
  for got, want in zip(restored.model.get_weights(), mixed.model.get_weights()):
    np.testing.assert_array_equal(got, want)


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
