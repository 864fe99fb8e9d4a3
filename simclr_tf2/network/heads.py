"""Projection head and supervised head, with the reference's object graph.

Structure: docs/architecture-notes.md, "Heads".
Kn: defect numbers of the official code, listed in docs/differences.md.
"""

import tensorflow as tf
import tf_keras as keras

from simclr_tf2.compat import set_layer_name
from simclr_tf2.network.resnet import BatchNormRelu, NormSettings, frozen_training

HEAD_INITIALIZER_STDDEV = 0.01


class LinearLayer(keras.layers.Layer):
  """Dense (created lazily in build) optionally followed by BN; no activation.

  With BN the dense has no bias and `use_bias` decides whether BN has a beta. The Keras name is
  overwritten after construction (never uniquified), like the reference.
  """

  def __init__(self, num_classes, use_bias=True, use_bn=False, name='linear_layer',
               norm: NormSettings = NormSettings(), **kwargs):
    super().__init__(**kwargs)
    self.num_classes = num_classes  # an int, or a callable of the input shape
    self.use_bias = use_bias
    self.use_bn = use_bn
    set_layer_name(self, name)
    if use_bn:
      self.bn_relu = BatchNormRelu(norm, relu=False, center=use_bias)

  def build(self, input_shape):
    units = self.num_classes(input_shape) if callable(self.num_classes) else self.num_classes
    self.dense = keras.layers.Dense(
        units, kernel_initializer=keras.initializers.RandomNormal(stddev=HEAD_INITIALIZER_STDDEV),
        use_bias=self.use_bias and not self.use_bn)
    super().build(input_shape)

  def call(self, inputs, training):
    if inputs.shape.ndims != 2:
      raise ValueError(f'{self.name} expects a rank-2 input, got shape {inputs.shape}')
    outputs = self.dense(inputs)
    if self.use_bn:
      outputs = self.bn_relu(outputs, training=training)
    return outputs


def _input_width(input_shape):
  return int(input_shape[-1])


class ProjectionHead(keras.layers.Layer):
  """`none` / `linear` / `nonlinear` (BN-MLP) head.

  Returns `(projection_output, hiddens[ft_proj_selector])` where
  `hiddens = [input, layer_1 output, ..., layer_K output]`. The reference crashed for `linear`
  and `none` (K3, K4); here both return that pair. Layers listed in `frozen_layers` (unused by
  the supervised head when finetuning, K7) run with BN in inference mode.
  """

  def __init__(self, proj_head_mode='nonlinear', proj_out_dim=128, num_proj_layers=3,
               ft_proj_selector=0, norm: NormSettings = NormSettings(), frozen_layers=(),
               **kwargs):
    super().__init__(**kwargs)
    self.proj_head_mode = proj_head_mode
    self.ft_proj_selector = ft_proj_selector
    self._frozen_layers = frozenset(frozen_layers)
    self.linear_layers = []
    if proj_head_mode == 'linear':
      self.linear_layers = [LinearLayer(
          proj_out_dim, use_bias=False, use_bn=True, name='l_0', norm=norm,
          trainable=0 not in self._frozen_layers)]
    elif proj_head_mode == 'nonlinear':
      for j in range(num_proj_layers):
        last = j == num_proj_layers - 1
        self.linear_layers.append(LinearLayer(
            proj_out_dim if last else _input_width, use_bias=not last, use_bn=True,
            name=f'nl_{j}', norm=norm, trainable=j not in self._frozen_layers))
    elif proj_head_mode != 'none':
      raise ValueError(f'unknown proj_head_mode {proj_head_mode!r}')

  def call(self, inputs, training, endpoints=None):
    hiddens = self.hiddens(inputs, training)
    projection = tf.identity(hiddens[-1], name='proj_head_output')
    if endpoints is not None:
      endpoints['proj_head_input'] = hiddens[0]
      endpoints['proj_head_output'] = projection
    return projection, hiddens[self.ft_proj_selector]

  def hiddens(self, inputs, training):
    """[input, layer_1 output, ..., layer_K output]: what ft_proj_selector picks from."""
    hiddens = [tf.identity(inputs, name='proj_head_input')]
    for j, layer in enumerate(self.linear_layers):
      outputs = layer(hiddens[-1], training=frozen_training(
          training, j in self._frozen_layers, freeze_bn_stats=True))
      if self.proj_head_mode == 'nonlinear' and j != len(self.linear_layers) - 1:
        outputs = tf.nn.relu(outputs)
      hiddens.append(outputs)
    return hiddens


class SupervisedHead(keras.layers.Layer):
  """Linear classifier with bias; Keras name `head_supervised` (the LARS/decay filters use it)."""

  def __init__(self, num_classes, name='head_supervised', **kwargs):
    super().__init__(name=name, **kwargs)
    self.linear_layer = LinearLayer(num_classes)

  def call(self, inputs, training):
    return tf.identity(self.linear_layer(inputs, training=training), name='logits_sup')
