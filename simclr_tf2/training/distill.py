"""SimCLRv2's third stage: distil a frozen teacher into a student (`--train_mode=distill`).

The teacher is any fine-tuned model `load_model` reads (a run's model_dir, a checkpoint of this
project or of the official layout, an exported SavedModel); it runs in inference mode, receives
no gradient and is not part of the student's checkpoints. The student is built from the usual
architecture flags exactly as a fine-tuned model (same variables and checkpoint keys), so
evaluation, export, conversion and embeddings treat it as one. Loss, per replica:

    (1 - w) * tau^2 * CE(softmax(teacher / tau), softmax(student / tau)) + w * CE(labels, student)

averaged over the local batch and divided by the number of replicas like the supervised loss,
with w = --distill_label_weight and tau = --distill_temperature.
"""

from typing import NamedTuple, Optional

import tensorflow as tf

from simclr_tf2.config import Config
from simclr_tf2.errors import SimCLRError, TeacherError, one_line
from simclr_tf2.inference.loading import load_model
from simclr_tf2.training.objective import distillation_loss, supervised_loss
from simclr_tf2.training.task import SimCLRTask

UNLABELED_DATASETS = ('image_folder_unlabeled',)


class Teacher(NamedTuple):
  """A loaded, frozen teacher: `model` has `call_with_endpoints`; `path` is what was loaded."""
  model: object
  num_classes: int
  path: str

  def logits(self, images) -> tf.Tensor:
    """The teacher's float32 logits in inference mode (batch-norm moving statistics)."""
    endpoints = self.model.call_with_endpoints(images, training=False)
    return tf.stop_gradient(tf.cast(endpoints['logits_sup'], tf.float32))


def load_teacher(config: Config, strategy: Optional[tf.distribute.Strategy] = None,
                 source=None) -> Teacher:
  """The teacher of `config.teacher_checkpoint`, its variables created under `strategy`.

  One-line TeacherError when it cannot be read, has no supervised head, or (given the data
  `source`) has a class count other than the dataset's.
  """
  path = config.teacher_checkpoint
  if not path:
    raise TeacherError('--teacher_checkpoint is required with train_mode=distill')
  try:
    loaded = load_model(path, strategy=strategy, precision=config.precision)
  except SimCLRError as error:
    raise TeacherError(f'--teacher_checkpoint={path}: {one_line(error)}') from None
  if getattr(loaded.model, 'trainable', None) is not None:
    loaded.model.trainable = False  # belt and braces: nothing of it is ever optimised
  size = config.image_size
  probe = loaded.model.call_with_endpoints(tf.zeros([1, size, size, 3]), training=False)
  if 'logits_sup' not in probe:
    raise TeacherError(f'--teacher_checkpoint={path}: the teacher has no supervised head; '
                       'distil from a fine-tuned model (train_mode=finetune)')
  num_classes = int(probe['logits_sup'].shape[-1])
  if (source is not None and config.dataset not in UNLABELED_DATASETS and
      num_classes != source.num_classes):
    raise TeacherError(f'--teacher_checkpoint={path}: the teacher predicts {num_classes} '
                       f'classes, dataset {config.dataset} has {source.num_classes}')
  return Teacher(loaded.model, num_classes, loaded.path)


class DistillationTask(SimCLRTask):
  """SimCLRTask's surface (model = the student, optimizer, metrics, steps, checkpoint()) with
  the distillation objective. `teacher` comes from `load_teacher`, loaded under `strategy`."""

  def __init__(self, config: Config, teacher: Teacher,
               strategy: Optional[tf.distribute.Strategy] = None):
    if config.train_mode != 'distill':
      raise ValueError(f'DistillationTask needs train_mode=distill, got {config.train_mode}')
    self.teacher = teacher
    super().__init__(config, teacher.num_classes, strategy)

  def _targets(self, images, labels):
    return labels, self.teacher.logits(images)

  def _objective(self, projection, logits, targets, values):
    del projection  # a fine-tuning model has no projection output
    config = self.config
    labels, teacher_logits = targets
    logits = tf.cast(logits, tf.float32)  # the loss is float32 at any precision
    kd_loss = distillation_loss(teacher_logits, logits, config.distill_temperature)
    values.update(distill_loss=kd_loss, logits=logits)
    weight = config.distill_label_weight
    if weight > 0:
      sup_loss = supervised_loss(labels, logits)
      values.update(supervised_loss=sup_loss, labels=labels)
      return (1. - weight) * kd_loss + weight * sup_loss
    # No labels: the accuracy metric measures agreement with the teacher.
    values['labels'] = tf.one_hot(tf.argmax(teacher_logits, 1), tf.shape(teacher_logits)[1])
    return kd_loss

  def _chunk_loss(self, logits, targets, global_batch):
    # The objective is a mean over the chunk's rows: its share of the global batch's mean.
    rows = tf.cast(tf.shape(logits)[0], tf.float32)
    return self._objective(None, logits, targets, {}) * rows / tf.cast(global_batch, tf.float32)
