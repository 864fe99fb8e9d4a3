"""After one training step, the checkpoint keys and shapes (optimizer slots included) equal the
official golden lists.
"""

import pytest
import tensorflow as tf

from golden_data import GOLDEN_CONFIGS, cases, fresh_golden_model, read_keys
from simclr_tf2.training.lars import build_optimizer
from simclr_tf2.training.schedule import WarmUpAndCosineDecay


def _input_batch(config, batch=4):
  views = 2 if config.train_mode == 'pretrain' else 1
  return tf.random.uniform([batch, config.image_size, config.image_size, 3 * views], seed=1)


def _train_one_step(model):
  """One reference-shaped step: every output feeds the loss, all (grad, var) pairs are applied."""
  config = model.simclr_config
  # A schedule, like the reference: a float LR would add a legacy `learning_rate` hyper-variable.
  schedule = WarmUpAndCosineDecay.from_config(config, num_examples=1000)
  optimizer = build_optimizer(config.optimizer, schedule, config.momentum, config.weight_decay)

  @tf.function
  def step(images):
    with tf.GradientTape() as tape:
      outputs = [o for o in model(images, training=True) if o is not None]
      loss = tf.add_n([tf.reduce_mean(tf.square(o)) for o in outputs])
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))

  step(_input_batch(config))
  return optimizer


def _saved_keys(model, optimizer, tmp_path):
  checkpoint = tf.train.Checkpoint(model=model, global_step=optimizer.iterations,
                                   optimizer=optimizer)
  prefix = checkpoint.save(str(tmp_path / 'ckpt'))
  return {key: list(shape) for key, shape in tf.train.list_variables(prefix)}


def _assert_same_keys(saved, golden):
  missing = sorted(set(golden) - set(saved))
  unexpected = sorted(set(saved) - set(golden))
  assert not missing and not unexpected, f'missing {missing[:10]}, unexpected {unexpected[:10]}'
  wrong_shapes = {k: (saved[k], golden[k]) for k in golden if saved[k] != golden[k]}
  assert not wrong_shapes, wrong_shapes


# The fast subset keeps the cheapest configuration: all model keys plus LARS slots.
@pytest.mark.parametrize('name', cases(sorted(GOLDEN_CONFIGS),
                                       fast={'r18_cifar_finetune_after4_lars'}))
def test_checkpoint_keys_equal_golden(name, tmp_path):
  model = fresh_golden_model(name)
  optimizer = _train_one_step(model)
  _assert_same_keys(_saved_keys(model, optimizer, tmp_path), read_keys(name))
