"""Distillation (train_mode=distill): the loss against hand-computed values, the label-weight
mix, the settings' validation and the metrics' names. No training run
(tests/e2e/test_distill_training.py trains)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.config import Config
from simclr_tf2.errors import ConfigError
from simclr_tf2.training.distill import DistillationTask, Teacher
from simclr_tf2.training.metrics import TrainMetrics
from simclr_tf2.training.objective import distillation_loss

DISTILL = dict(dataset='digits', resnet_depth=18, image_size=8, train_mode='distill',
               teacher_checkpoint='/nonexistent/teacher', use_tpu=False, optimizer='momentum')


def test_loss_at_temperature_two_is_tau_squared_times_cross_entropy():
  # Teacher [0, 0]: p = (1/2, 1/2). Student [0, 2 ln 3] / tau=2 = [0, ln 3]: q = (1/4, 3/4).
  # CE = -(ln(1/4) + ln(3/4)) / 2 = ln(16/3) / 2; times tau^2 = 4: 2 ln(16/3).
  teacher = tf.constant([[0., 0.]])
  student = tf.constant([[0., 2 * math.log(3.)]])
  loss = distillation_loss(teacher, student, temperature=2.)
  assert float(loss) == pytest.approx(2 * math.log(16 / 3), rel=1e-6)


def test_loss_is_the_batch_mean_and_tau_one_is_plain_soft_cross_entropy():
  # Row 1: teacher one-hot-like (0 and -inf ~ -1e9): p = (1, 0); student [ln 1, ln 3] -> q =
  # (1/4, 3/4): CE = ln 4. Row 2: identical logits [0, 0]: CE = ln 2. Mean: (ln 4 + ln 2) / 2.
  teacher = tf.constant([[0., -1e9], [5., 5.]])
  student = tf.constant([[0., math.log(3.)], [1., 1.]])
  loss = distillation_loss(teacher, student, temperature=1.)
  assert float(loss) == pytest.approx((math.log(4.) + math.log(2.)) / 2, rel=1e-6)


def test_loss_gives_the_teacher_no_gradient():
  teacher = tf.Variable([[1., 2., 3.]])
  student = tf.Variable([[0., 0., 0.]])
  with tf.GradientTape() as tape:
    loss = distillation_loss(teacher, student, temperature=3.)
  teacher_grad, student_grad = tape.gradient(loss, [teacher, student])
  assert teacher_grad is None
  # d/ds of tau^2 CE(p, softmax(s / tau)) = tau (q - p); q uniform at s = 0.
  p = np.exp(np.array([1., 2., 3.]) / 3.)
  p /= p.sum()
  np.testing.assert_allclose(student_grad.numpy()[0], 3. * (1 / 3 - p), rtol=1e-5)


class _FixedTeacher:
  """A teacher whose logits are given (call_with_endpoints, as a loaded model)."""

  def __init__(self, logits):
    self.logits = tf.constant(logits)

  def call_with_endpoints(self, images, training=False):
    assert training is False
    return {'logits_sup': self.logits[:tf.shape(images)[0]]}


@pytest.mark.parametrize('weight', [0., 0.25, 1.])
def test_label_weight_mixes_distillation_and_supervised_loss(weight):
  rng = np.random.default_rng(0)
  teacher_logits = rng.normal(size=[4, 10]).astype(np.float32) * 3
  labels = np.eye(10, dtype=np.float32)[[1, 2, 3, 4]]
  images = tf.constant(rng.uniform(size=[4, 8, 8, 3]).astype(np.float32))
  config = Config(**DISTILL, distill_temperature=2., distill_label_weight=weight)
  task = DistillationTask(config, Teacher(_FixedTeacher(teacher_logits), 10, 'fixed'))
  # The step's own computation (public), without the update: its values hold the student's
  # logits, the distillation loss and the total loss.
  _, values = task.compute_gradients(images, tf.constant(labels))
  s = values.logits.numpy().astype(np.float64)

  def log_softmax(x):
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))

  p = np.exp(log_softmax(teacher_logits / 2.))
  kd = 4. * np.mean(-(p * log_softmax(s / 2.)).sum(1))
  ce = np.mean(-(labels * log_softmax(s)).sum(1))
  assert float(values.distill_loss) == pytest.approx(kd, rel=1e-5)
  assert float(values.total_loss - values.weight_decay) == pytest.approx(
      (1 - weight) * kd + weight * ce, rel=1e-5)
  assert (values.supervised_loss is not None) == (weight > 0)
  if weight == 0:  # accuracy is then agreement with the teacher's argmax
    np.testing.assert_array_equal(np.argmax(values.labels, 1), np.argmax(teacher_logits, 1))


@pytest.mark.parametrize('setting, value, message', [
    ('distill_temperature', 0., '--distill_temperature=0.0: must be > 0'),
    ('distill_temperature', -1., '--distill_temperature=-1.0: must be > 0'),
    ('distill_temperature', float('nan'), '--distill_temperature=nan: must be finite'),
    ('distill_label_weight', -0.1, '--distill_label_weight=-0.1: must be in [0, 1]'),
    ('distill_label_weight', 1.5, '--distill_label_weight=1.5: must be in [0, 1]'),
    ('label_fraction', 0., '--label_fraction=0.0: must be in (0, 1]'),
    ('teacher_checkpoint', None, '--teacher_checkpoint=None: is required with train_mode=distill'),
])
def test_bad_distillation_settings_are_one_line_config_errors(setting, value, message):
  with pytest.raises(ConfigError) as error:
    Config(**{**DISTILL, setting: value})
  assert str(error.value).startswith(message) and '\n' not in str(error.value)


def test_unlabeled_images_distil_only_without_labels():
  Config(**{**DISTILL, 'dataset': 'image_folder_unlabeled'})  # w = 0, mode=train: fine
  with pytest.raises(ConfigError, match='has no labels'):
    Config(**{**DISTILL, 'dataset': 'image_folder_unlabeled', 'distill_label_weight': 0.5})
  with pytest.raises(ConfigError, match='has no labels'):
    Config(**{**DISTILL, 'dataset': 'image_folder_unlabeled', 'mode': 'train_then_eval'})


@pytest.mark.parametrize('weight, names', [
    (0., ['train/weight_decay', 'train/total_loss', 'train/distill_loss', 'train/supervised_acc']),
    (0.5, ['train/weight_decay', 'train/total_loss', 'train/distill_loss',
           'train/supervised_loss', 'train/supervised_acc']),
])
def test_distillation_metrics_in_the_reference_naming_style(weight, names):
  metrics = TrainMetrics('distill', lineareval_while_pretraining=True, label_weight=weight)
  assert [m.name for m in metrics.all] == names


def test_semi_supervised_recipes_parse_into_the_paper_stages():
  from simclr_tf2.demo import recipe  # pylint: disable=import-outside-toplevel
  one, ten = recipe('simclrv2_finetune_1pct'), recipe('simclrv2_finetune_10pct')
  assert (one.dataset, one.train_epochs, one.ft_proj_selector, one.learning_rate,
          one.learning_rate_scaling, one.weight_decay, one.train_batch_size) == (
              'imagenet2012_subset/1pct', 60, 1, 0.005, 'sqrt', 0., 1024)
  assert (ten.dataset, ten.train_epochs) == ('imagenet2012_subset/10pct', 30)
  self_distill, small = recipe('simclrv2_self_distill'), recipe('simclrv2_distill_to_r50')
  assert (self_distill.train_mode, self_distill.distill_temperature,
          self_distill.distill_label_weight, self_distill.train_epochs,
          self_distill.resnet_depth, self_distill.width_multiplier) == (
              'distill', 0.1, 0., 400, 152, 3)  # SimCLRv2 Section 3.1: 0.1 for self-distillation
  assert (small.resnet_depth, small.width_multiplier, small.sk_ratio, small.distill_temperature,
          small.teacher_checkpoint) == (50, 1, 0., 1., self_distill.teacher_checkpoint)
