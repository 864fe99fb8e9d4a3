"""LARS optimizer and the optimizer factory (`--optimizer` = lars, momentum or adam).

LARS is implemented here because tensorflow-addons (its usual home) is end-of-life. It subclasses
the *legacy* Keras optimizer like the reference, so checkpoints keep the reference layout: one
`Momentum` slot per variable and no optimizer-level variable besides `iterations` (the learning
rate is a schedule; a float learning rate adds `learning_rate`, as in every legacy optimizer).
Kn: defect numbers of the official code, listed in docs/differences.md.
"""

import re

import tensorflow as tf
import tf_keras as keras

from simclr_tf2.training.objective import BATCH_NORM_NAME, BIAS_NAME, SUPERVISED_HEAD_NAME

# Same name rules as objective.weight_decay_variables, which decays what LARS skips (K18, K19).
EXCLUDE_FROM_WEIGHT_DECAY = (BATCH_NORM_NAME, BIAS_NAME, SUPERVISED_HEAD_NAME)
DEFAULT_EETA = 0.001


class LARSOptimizer(keras.optimizers.legacy.Optimizer):
  """Layer-wise Adaptive Rate Scaling (You et al. 2017) with SimCLR's momentum variants.

  `exclude_from_weight_decay` / `exclude_from_layer_adaptation` are regex lists searched in the
  full variable name (e.g. `.../batch_normalization/gamma:0`); a hit skips decay / trust ratio.
  The adaptation list defaults to the decay list.
  """

  def __init__(self, learning_rate, momentum=0.9, use_nesterov=False, weight_decay=0.0,
               exclude_from_weight_decay=None, exclude_from_layer_adaptation=None,
               classic_momentum=True, eeta=DEFAULT_EETA, name='LARSOptimizer', **kwargs):
    super().__init__(name, **kwargs)
    self._set_hyper('learning_rate', learning_rate)
    # Plain attributes, not hypers: hypers would become extra checkpoint variables.
    self.momentum = momentum
    self.use_nesterov = use_nesterov
    self.weight_decay = weight_decay
    self.classic_momentum = classic_momentum
    self.eeta = eeta
    self.exclude_from_weight_decay = exclude_from_weight_decay
    self.exclude_from_layer_adaptation = (
        exclude_from_weight_decay if exclude_from_layer_adaptation is None
        else exclude_from_layer_adaptation)

  def _create_slots(self, var_list):
    for var in var_list:
      self.add_slot(var, 'Momentum')

  def _use_weight_decay(self, var_name):
    return bool(self.weight_decay) and not _matches_any(self.exclude_from_weight_decay, var_name)

  def _do_layer_adaptation(self, var_name):
    return not _matches_any(self.exclude_from_layer_adaptation, var_name)

  def _trust_ratio(self, var, direction):
    """eeta * |w| / |direction| when both norms are positive, else 1."""
    w_norm = tf.norm(var)
    d_norm = tf.norm(direction)
    ratio = tf.math.divide_no_nan(self.eeta * w_norm, d_norm)
    return tf.where(tf.logical_and(w_norm > 0, d_norm > 0), ratio, tf.ones_like(ratio))

  def _resource_apply_dense(self, grad, var, apply_state=None):
    var_device, var_dtype = var.device, var.dtype.base_dtype
    coefficients = ((apply_state or {}).get((var_device, var_dtype))
                    or self._fallback_apply_state(var_device, var_dtype))
    learning_rate = coefficients['lr_t']
    momentum_slot = self.get_slot(var, 'Momentum')
    momentum = tf.cast(self.momentum, var_dtype)
    adapt = self._do_layer_adaptation(var.name)

    if self._use_weight_decay(var.name):
      grad = grad + tf.cast(self.weight_decay, var_dtype) * var

    if self.classic_momentum:
      # Trust ratio scales the gradient before it enters the momentum buffer.
      scaled_lr = learning_rate * self._trust_ratio(var, grad) if adapt else learning_rate
      next_momentum = momentum * momentum_slot + scaled_lr * grad
      update = (momentum * next_momentum + scaled_lr * grad if self.use_nesterov
                else next_momentum)
      next_var = var - update
    else:
      # Trust ratio is computed on the final update direction.
      next_momentum = momentum * momentum_slot + grad
      update = momentum * next_momentum + grad if self.use_nesterov else next_momentum
      scaled_lr = learning_rate * self._trust_ratio(var, update) if adapt else learning_rate
      next_var = var - scaled_lr * update

    return tf.group(var.assign(next_var, use_locking=self._use_locking),
                    momentum_slot.assign(next_momentum, use_locking=self._use_locking))

  def get_config(self):
    config = super().get_config()
    config.update({
        'learning_rate': self._serialize_hyperparameter('learning_rate'),
        'momentum': self.momentum,
        'classic_momentum': self.classic_momentum,
        'weight_decay': self.weight_decay,
        'eeta': self.eeta,
        'use_nesterov': self.use_nesterov,
        # Not in the reference's config; without them from_config silently drops the exclusions.
        'exclude_from_weight_decay': self.exclude_from_weight_decay,
        'exclude_from_layer_adaptation': self.exclude_from_layer_adaptation,
    })
    return config


def _matches_any(patterns, name):
  return any(re.search(pattern, name) is not None for pattern in patterns or ())


def build_optimizer(optimizer_name, learning_rate, momentum, weight_decay):
  """The optimizer selected by the `optimizer` setting; `learning_rate` may be a schedule.

  momentum/adam use the non-legacy Keras optimizers (their schedule must take a float step, K2)
  and get weight decay from `objective.weight_decay_loss` instead.
  """
  if optimizer_name == 'lars':
    return LARSOptimizer(
        learning_rate, momentum=momentum, weight_decay=weight_decay,
        exclude_from_weight_decay=list(EXCLUDE_FROM_WEIGHT_DECAY),
        classic_momentum=True, use_nesterov=False, eeta=DEFAULT_EETA)
  if optimizer_name == 'momentum':
    return keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=True)
  if optimizer_name == 'adam':
    return keras.optimizers.Adam(learning_rate)
  raise ValueError(f'unknown optimizer {optimizer_name!r}; expected lars, momentum or adam')
