"""Learning-rate schedule: linear warm-up then cosine decay to 0, as the official code.

Kn: defect numbers of the official code, listed in docs/differences.md.
"""

import math

import tensorflow as tf
import tf_keras as keras

from simclr_tf2.config import Config


class WarmUpAndCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
  """lr(s) = s / W * peak for s < W, else peak * 0.5 * (1 + cos(pi * min(s - W, T - W) / (T - W))).

  W (warm-up steps), peak (batch-scaled learning rate) and T (total steps) come from `Config`,
  the single place those formulas live. Steps >= T (the loop's overshoot, K8) get learning rate 0.
  """

  def __init__(self, base_learning_rate, num_examples, train_batch_size=512, warmup_epochs=10.,
               learning_rate_scaling='linear', train_steps=0, train_epochs=100,
               name='WarmUpAndCosineDecay'):
    super().__init__()
    self.base_learning_rate = base_learning_rate
    self.num_examples = num_examples
    self.train_batch_size = train_batch_size
    self.warmup_epochs = warmup_epochs
    self.learning_rate_scaling = learning_rate_scaling
    self.train_steps = train_steps
    self.train_epochs = train_epochs
    self._name = name
    config = Config(learning_rate=base_learning_rate, train_batch_size=train_batch_size,
                    warmup_epochs=warmup_epochs, learning_rate_scaling=learning_rate_scaling,
                    train_steps=train_steps, train_epochs=train_epochs)
    self.warmup_steps = config.warmup_steps(num_examples)
    self.total_steps = config.total_train_steps(num_examples)
    self.peak_learning_rate = config.peak_learning_rate()

  @classmethod
  def from_config(cls, config, num_examples=None):
    """From a `Config` and the training-split size, or (Keras round trip) a `get_config` dict."""
    if isinstance(config, dict):
      return cls(**config)
    return cls(config.learning_rate, num_examples, train_batch_size=config.train_batch_size,
               warmup_epochs=config.warmup_epochs,
               learning_rate_scaling=config.learning_rate_scaling,
               train_steps=config.train_steps, train_epochs=config.train_epochs)

  def __call__(self, step):
    with tf.name_scope(self._name):
      # Non-legacy Keras optimizers pass the int64 `iterations` (K2).
      step = tf.cast(step, tf.float32)
      peak = tf.constant(self.peak_learning_rate, tf.float32)
      if self.warmup_steps:
        warmup_lr = step / float(self.warmup_steps) * peak
      else:
        warmup_lr = peak
      # Same float32 operation order as Keras CosineDecay(peak, T - W, alpha=0) at s - W.
      decay_steps = tf.constant(self.total_steps - self.warmup_steps, tf.float32)
      decay_step = tf.minimum(step - self.warmup_steps, decay_steps)
      # T == W would be 0 / 0; the cosine branch then only covers s >= T, where lr is 0.
      fraction = decay_step / decay_steps if self.total_steps != self.warmup_steps else 1.
      cosine_lr = peak * (0.5 * (1. + tf.cos(tf.constant(math.pi, tf.float32) * fraction)))
      return tf.where(step < self.warmup_steps, warmup_lr, cosine_lr)

  def get_config(self):
    return {
        'base_learning_rate': self.base_learning_rate,
        'num_examples': self.num_examples,
        'train_batch_size': self.train_batch_size,
        'warmup_epochs': self.warmup_epochs,
        'learning_rate_scaling': self.learning_rate_scaling,
        'train_steps': self.train_steps,
        'train_epochs': self.train_epochs,
        'name': self._name,
    }
