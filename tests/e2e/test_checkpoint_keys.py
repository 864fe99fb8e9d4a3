"""The training checkpoint's keys and shapes (optimizer slots included) equal the official golden
lists, which the reference wrote after one training step: a task holds every variable of its
checkpoint once its optimizer is built, and its first step creates none (a variable created in
the step would also make tf.function trace the step twice).
"""

import pytest
import tensorflow as tf
import tf_keras as keras

from fixed_batch import train_on_fixed_batch
from golden_data import GOLDEN_CONFIGS, NUM_CLASSES, REFERENCE_PARITY, read_keys
from simclr_tf2.config import Config
from simclr_tf2.training.task import SimCLRTask


def _golden_task(name):
  """The task of a golden configuration, optimizer built, in a fresh Keras session."""
  keras.backend.clear_session()
  task = SimCLRTask(Config(**GOLDEN_CONFIGS[name], **REFERENCE_PARITY), NUM_CLASSES)
  task.build_optimizer(num_train_examples=1000)
  return task


def _saved_keys(task, tmp_path):
  prefix = task.checkpoint().save(str(tmp_path / 'ckpt'))
  return {key: list(shape) for key, shape in tf.train.list_variables(prefix)}


def _assert_same_keys(saved, golden):
  missing = sorted(set(golden) - set(saved))
  unexpected = sorted(set(saved) - set(golden))
  assert not missing and not unexpected, f'missing {missing[:10]}, unexpected {unexpected[:10]}'
  wrong_shapes = {k: (saved[k], golden[k]) for k in golden if saved[k] != golden[k]}
  assert not wrong_shapes, wrong_shapes


@pytest.mark.parametrize('name', sorted(GOLDEN_CONFIGS))
def test_checkpoint_keys_equal_golden_once_the_optimizer_is_built(name, tmp_path):
  _assert_same_keys(_saved_keys(_golden_task(name), tmp_path), read_keys(name))


# LARS (slots by variable) pretraining and finetuning (where the unused projection head is
# trainable in these reference-parity settings but gets no gradient, hence no slot), and the
# non-legacy momentum optimizer (slots for every trainable variable, in creation order).
@pytest.mark.parametrize('name', ['r18_cifar_pretrain_lars', 'r18_cifar_finetune_after4_lars',
                                  'r18_cifar_finetune_momentum_tfkeras221'])
def test_the_first_training_step_creates_no_variable(name, tmp_path):
  task = _golden_task(name)
  config = task.config
  channels = 6 if config.train_mode == 'pretrain' else 3
  images = tf.random.uniform([4, config.image_size, config.image_size, channels], seed=1)
  labels = tf.one_hot([0, 1, 2, 3], NUM_CLASSES)
  created = []

  def record(next_creator, **kwargs):
    variable = next_creator(**kwargs)
    created.append(variable.name)
    return variable

  with tf.variable_creator_scope(record):
    train_on_fixed_batch(task, images, labels, build_optimizer=False)
  assert created == []
  _assert_same_keys(_saved_keys(task, tmp_path), read_keys(name))
