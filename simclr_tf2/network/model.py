"""The SimCLR model: blur, ResNet encoder, projection head, supervised head.

Kn: defect numbers of the official code, listed in docs/differences.md.

Python API (no absl needed)::

    from simclr_tf2.network.model import build_model
    model = build_model(num_classes=10, resnet_depth=18, image_size=32)   # flag names
    projection, logits = model(images, training=False)
    endpoints = model.call_with_endpoints(images)    # the 10 SavedModel outputs, by name
"""

import contextlib
from typing import Dict, List, Optional

import tensorflow as tf
import tf_keras as keras

from simclr_tf2.network.blur import random_blur
from simclr_tf2.config import Config
from simclr_tf2.network.heads import ProjectionHead, SupervisedHead
from simclr_tf2.network.resnet import NormSettings, Resnet

ENDPOINT_NAMES = ('initial_conv', 'initial_max_pool', 'block_group1', 'block_group2',
                  'block_group3', 'block_group4', 'final_avg_pool', 'logits_sup',
                  'proj_head_input', 'proj_head_output')


def unused_projection_layers(config: Config):
  """Indices of projection layers the supervised head does not depend on when finetuning: they
  get no gradient (K7)."""
  if config.train_mode == 'pretrain':
    return ()
  num_layers = config.num_projection_outputs() - 1
  used = config.ft_proj_selector % (num_layers + 1)  # hiddens[i] depends on layers 0..i-1
  return tuple(range(used, num_layers))


class SimCLRModel(keras.Model):
  """Encoder + heads with the reference's attributes: `resnet_model`, `_projection_head` and,
  in finetune mode or with linear eval while pretraining, `supervised_head`.

  Like the reference, `__call__` bypasses Keras' call wrapper (K26), so variable names start with
  `resnet/`, `projection_head/`, `head_supervised/` — the strings the LARS / weight-decay filters
  match. Always pass `training`.
  """

  def __init__(self, num_classes: Optional[int], config: Config, **kwargs):
    super().__init__(**kwargs)
    self.simclr_config = config
    norm = NormSettings(decay=config.batch_norm_decay, synchronized=config.global_bn)
    # A distillation student is a fine-tuned model: same variables, same checkpoint keys.
    finetune = config.train_mode != 'pretrain'
    self.resnet_model = Resnet(
        resnet_depth=config.resnet_depth, width_multiplier=config.width_multiplier,
        cifar_stem=config.cifar_stem, sk_ratio=config.sk_ratio, se_ratio=config.se_ratio,
        norm=norm, finetune=finetune, fine_tune_after_block=config.fine_tune_after_block,
        freeze_bn_stats_when_frozen=config.freeze_bn_stats_when_frozen)
    self._projection_head = ProjectionHead(
        proj_head_mode=config.proj_head_mode, proj_out_dim=config.proj_out_dim,
        num_proj_layers=config.num_proj_layers, ft_proj_selector=config.ft_proj_selector,
        norm=norm, frozen_layers=(unused_projection_layers(config)
                                  if config.freeze_unused_proj_head else ()))
    if finetune or config.lineareval_while_pretraining:
      if not num_classes:
        raise ValueError('num_classes is required when the model has a supervised head '
                         '(train_mode=finetune or lineareval_while_pretraining)')
      self.supervised_head = SupervisedHead(num_classes)

  @property
  def has_supervised_head(self) -> bool:
    return hasattr(self, 'supervised_head')

  @property
  def updated_variables(self) -> List[tf.Variable]:
    """The trainable variables a training step updates, in `trainable_variables` order: all but
    those of the projection layers a fine-tuned supervised head does not use, which get no
    gradient (they are trainable only with --freeze_unused_proj_head=false, the reference's
    behaviour, K7). The optimizer has slots for exactly these, as in the reference."""
    unused = unused_projection_layers(self.simclr_config)
    skipped = {variable.ref() for index in unused
               for variable in self._projection_head.linear_layers[index].trainable_variables}
    return [v for v in self.trainable_variables if v.ref() not in skipped]

  @property
  def projection_head(self) -> ProjectionHead:
    """The projection head (the reference's attribute `_projection_head`, a checkpoint key)."""
    return self._projection_head

  def __call__(self, inputs, training, endpoints: Optional[Dict] = None, blur: bool = True,
               blur_seed=None):
    return self.call(inputs, training=training, endpoints=endpoints, blur=blur,
                     blur_seed=blur_seed)

  def call(self, inputs, training, endpoints: Optional[Dict] = None, blur: bool = True,
           blur_seed=None):
    """Returns `(projection_output or None, supervised_logits or None)` like the reference.

    `inputs` is [B, H, W, 3 * views]; views are stacked along the batch axis. `blur=False`
    disables the pretraining blur regardless of mode (used by exports, K25). `endpoints`, if a
    dict, receives the named intermediate tensors. `blur_seed` (int [2] tensor) makes the blur a
    function of that seed (seeded runs resume exactly); None draws fresh randomness.
    """
    config = self.simclr_config
    pretrain = config.train_mode == 'pretrain'
    if training and pretrain and config.fine_tune_after_block > -1:
      raise ValueError('fine_tune_after_block must be -1 when pretraining, got '
                       f'{config.fine_tune_after_block}')
    channels = inputs.shape[3]
    if channels is None:
      raise ValueError('the channel dimension of the input must be statically known')
    views = tf.split(inputs, channels // 3, axis=-1)
    if blur and config.use_blur and training and pretrain:
      views = [random_blur(view, config.image_size, seed=None if blur_seed is None else
                           tf.random.experimental.stateless_fold_in(blur_seed, index))
               for index, view in enumerate(views)]
    features = tf.concat(views, 0)

    hiddens = self.resnet_model(features, training=training, endpoints=endpoints)
    projection, supervised_input = self._projection_head(
        hiddens, training=training, endpoints=endpoints)
    logits = None
    if self.has_supervised_head:
      if pretrain:  # the linear-eval head must not shape the representation
        supervised_input = tf.stop_gradient(supervised_input)
      logits = self.supervised_head(supervised_input, training=training)
      if endpoints is not None:
        endpoints['logits_sup'] = logits
    return (None if not pretrain else projection), logits

  def call_with_endpoints(self, images, training: bool = False, blur: bool = False):
    """The official SavedModel outputs for a 3-channel batch, in ENDPOINT_NAMES order, as
    float32 whatever the compute precision."""
    endpoints = {}
    self.call(images, training=training, endpoints=endpoints, blur=blur)
    return {name: tf.cast(endpoints[name], tf.float32) for name in ENDPOINT_NAMES
            if name in endpoints}

  def logits_by_ft_proj_selector(self, images, selectors) -> Dict[int, tf.Tensor]:
    """{selector: the supervised head's logits (float32) on that projection-head layer's
    output}, i.e. what `logits_sup` would be with each `ft_proj_selector`, in inference mode
    from one pass of the encoder (the head's width must fit each selector's layer)."""
    hiddens = self._projection_head.hiddens(self.resnet_model(images, training=False),
                                            training=False)
    return {selector: tf.cast(self.supervised_head(hiddens[selector], training=False), tf.float32)
            for selector in selectors}

  def create_variables(self):
    """Creates every variable with one inference pass on a dummy batch.

    Needed before restoring a checkpoint whose values must be edited afterwards
    (zero_init_logits_layer, K5) and before building an optimizer over the variables.
    """
    size = min(self.simclr_config.image_size, 64)
    self.call(tf.zeros([2, size, size, 3]), training=False)
    return self


def build_model(num_classes: Optional[int] = None, config: Optional[Config] = None,
                **flag_values) -> SimCLRModel:
  """Builds a SimCLRModel from a Config and/or keyword arguments named like the absl flags."""
  config = config or Config()
  if flag_values:
    config = config.replace(**flag_values)
  with compute_precision(config.precision):
    return SimCLRModel(num_classes, config)


@contextlib.contextmanager
def compute_precision(precision: str):
  """Keras layers take the global dtype policy when constructed: set it for this block only.

  'mixed_*' layers keep float32 variables (read as 16-bit inside their calls); batch norm
  computes its statistics in float32 either way.
  """
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(precision)
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy(previous)
