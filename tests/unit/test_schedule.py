"""Warm-up + cosine schedule vs golden lr_schedule_vectors.json and a NumPy closed form.

Kn: defect numbers of the official code, listed in docs/differences.md.
"""

import json
import math

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.config import Config
from simclr_tf2.training.lars import build_optimizer
from simclr_tf2.training.schedule import WarmUpAndCosineDecay

SETTINGS = ['cifar10_readme_pretrain', 'imagenet_readme_pretrain', 'cifar10_finetune_nowarmup',
            'short_train_steps_long_warmup']


@pytest.fixture(scope='module')
def vectors(golden_dir):
  return json.loads((golden_dir / 'lr_schedule_vectors.json').read_text())


def _config(flags):
  """Config from '--name=value' strings, converted with each field's declared type."""
  types = {f.name: f.type for f in Config.fields()}
  kwargs = {}
  for flag in flags:
    name, value = flag[2:].split('=', 1)
    kwargs[name] = types[name](value)
  return Config.from_kwargs(**kwargs)


def _numpy_lr(step, peak, warmup, total):
  if step < warmup:
    return step / warmup * peak
  fraction = min(step - warmup, total - warmup) / (total - warmup)
  return peak * 0.5 * (1 + math.cos(math.pi * fraction))


@pytest.mark.parametrize('setting', SETTINGS)
def test_derived_step_counts(vectors, setting):
  golden = vectors[setting]
  config, num_examples = _config(golden['flags']), golden['num_examples']
  schedule = WarmUpAndCosineDecay.from_config(config, num_examples)
  assert schedule.total_steps == config.total_train_steps(num_examples) == golden['train_steps']
  assert schedule.warmup_steps == config.warmup_steps(num_examples) == golden['warmup_steps']
  assert config.epoch_steps(num_examples) == golden['epoch_steps']
  steps_per_loop = config.steps_per_loop(num_examples)
  assert steps_per_loop == golden['checkpoint_steps']
  # The loop runs whole blocks of steps_per_loop, overshooting train_steps (K8).
  assert -(-golden['train_steps'] // steps_per_loop) * steps_per_loop == golden['steps_executed']


@pytest.mark.parametrize('setting', SETTINGS)
def test_learning_rates(vectors, setting):
  golden = vectors[setting]
  config, num_examples = _config(golden['flags']), golden['num_examples']
  schedule = WarmUpAndCosineDecay.from_config(config, num_examples)
  steps = [int(step) for step in golden['lr']]
  expected = np.array(list(golden['lr'].values()))
  actual = np.array([float(schedule(tf.constant(step, tf.int64))) for step in steps])
  np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-12)
  numpy_lr = [_numpy_lr(step, config.peak_learning_rate(), golden['warmup_steps'],
                        golden['train_steps']) for step in steps]
  # float64 closed form: float32 rounding near cos(pi) = -1 leaves ~1e-8 absolute differences.
  np.testing.assert_allclose(actual, numpy_lr, rtol=1e-5, atol=1e-7)


def test_warmup_equal_to_total_steps_has_no_nan():
  schedule = WarmUpAndCosineDecay(0.1, num_examples=2560, train_batch_size=256, warmup_epochs=1,
                                   train_steps=10)  # W = T = 10, peak 0.1
  values = [float(schedule(step)) for step in (0, 5, 10, 11)]
  np.testing.assert_allclose(values, [0., 0.05, 0., 0.], atol=1e-7)


def test_get_config_round_trip():
  schedule = WarmUpAndCosineDecay(0.075, 1281167, train_batch_size=4096,
                                  learning_rate_scaling='sqrt', train_epochs=100)
  clone = WarmUpAndCosineDecay.from_config(schedule.get_config())
  assert clone.get_config() == schedule.get_config()
  assert float(clone(17203)) == pytest.approx(2.4, rel=1e-6)


@pytest.mark.parametrize('optimizer_name', ['momentum', 'adam', 'lars'])
def test_optimizers_step_with_schedule(optimizer_name):
  """K2 regression: non-legacy SGD/Adam evaluate the schedule at the int64 iterations."""
  schedule = WarmUpAndCosineDecay(0.1, num_examples=512, train_batch_size=256, warmup_epochs=0,
                                  train_epochs=10)  # no warm-up: lr(0) = peak = 0.1 * 256 / 256
  optimizer = build_optimizer(optimizer_name, schedule, momentum=0.9, weight_decay=0.)
  variable = tf.Variable([1., -2.], name='head_supervised/kernel')  # LARS: no trust ratio
  optimizer.apply_gradients([(tf.constant([0.5, 0.5]), variable)])
  assert int(optimizer.iterations) == 1
  first_step = {
      'momentum': 0.1 * 0.5 * (1 + 0.9),  # Nesterov: w -= lr * g + momentum * lr * g
      'adam': 0.1,  # bias-corrected first Adam step moves by lr * sign(g)
      'lars': 0.1 * 0.5,
  }[optimizer_name]
  np.testing.assert_allclose(variable.numpy(), [1. - first_step, -2. - first_step], rtol=1e-5)
