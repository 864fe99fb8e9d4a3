"""ResNet v1.5 encoder with Selective-Kernel, ResNet-D and Squeeze-Excitation variants.

The object graph (attribute names, list positions, construction order) reproduces the official
`tf2/resnet.py` exactly, because checkpoint keys are paths through it and Keras variable names come
from construction order (docs/architecture-notes.md describes both). Elements without variables
(identity, pooling, padding, DropBlock) are kept in their lists so indices stay the same.
Kn: defect numbers of the official code, listed in docs/differences.md.
"""

from typing import NamedTuple, Optional

import tensorflow as tf
import tf_keras as keras

from simclr_tf2.architecture import (BLOCK_COUNTS, BLOCK_GROUP_STRIDES, BN_EPSILON,
                                     BOTTLENECK_MIN_DEPTH, SK_MIN_DIM)


class NormSettings(NamedTuple):
  """Batch-norm settings shared by every BN layer of the model."""
  decay: float = 0.9
  synchronized: bool = True  # the `global_bn` flag


def conv_initializer():
  return keras.initializers.VarianceScaling()  # scale 1, fan_in, truncated normal


def frozen_training(training, frozen: bool, freeze_bn_stats: bool):
  """`training` for a sub-layer: frozen parts run in inference mode when asked (K6)."""
  return False if (frozen and freeze_bn_stats) else training


class SyncBatchNormalization(keras.layers.BatchNormalization):
  """`BatchNormalization(synchronized=True)` under the deprecated endpoint's class name, so Keras
  still names the layers (and their variables) `sync_batch_normalization[_N]` as the reference
  did; the computation is the same one, without the deprecation warning."""

  def __init__(self, **kwargs):
    super().__init__(synchronized=True, **kwargs)


class BatchNormRelu(keras.layers.Layer):
  """BN (optionally cross-replica) followed by an optional ReLU. Attribute `bn` is a checkpoint key."""

  def __init__(self, norm: NormSettings, relu=True, init_zero=False, center=True, scale=True,
               **kwargs):
    super().__init__(**kwargs)
    self.relu = relu
    bn_class = SyncBatchNormalization if norm.synchronized else keras.layers.BatchNormalization
    extra = {} if norm.synchronized else {'fused': False}
    self.bn = bn_class(
        axis=-1, momentum=norm.decay, epsilon=BN_EPSILON, center=center, scale=scale,
        gamma_initializer='zeros' if init_zero else 'ones', **extra)

  def call(self, inputs, training):
    outputs = self.bn(inputs, training=training)
    return tf.nn.relu(outputs) if self.relu else outputs


class IdentityLayer(keras.layers.Layer):
  """Marks an endpoint (`initial_conv`, `initial_max_pool`); no variables."""

  def call(self, inputs):
    return tf.identity(inputs)


class DropBlock(keras.layers.Layer):
  """Placeholder for the reference's DropBlock, which is always disabled (K20): identity."""

  def call(self, inputs):
    return inputs


class FixedPadding(keras.layers.Layer):
  """Pads H and W by (k-1)//2 before and the rest after, independent of the input size."""

  def __init__(self, kernel_size, **kwargs):
    super().__init__(**kwargs)
    self.kernel_size = kernel_size

  def call(self, inputs):
    pad_total = self.kernel_size - 1
    pad_beg = pad_total // 2
    pad_end = pad_total - pad_beg
    return tf.pad(inputs, [[0, 0], [pad_beg, pad_end], [pad_beg, pad_end], [0, 0]])


class Conv2dFixedPadding(keras.layers.Layer):
  """Conv without bias: SAME at stride 1, explicit fixed padding + VALID when strided."""

  def __init__(self, filters, kernel_size, strides, **kwargs):
    super().__init__(**kwargs)
    self.fixed_padding = FixedPadding(kernel_size) if strides > 1 else None
    self.conv2d = keras.layers.Conv2D(
        filters=filters, kernel_size=kernel_size, strides=strides,
        padding='SAME' if strides == 1 else 'VALID', use_bias=False,
        kernel_initializer=conv_initializer())

  def call(self, inputs):
    if self.fixed_padding is not None:
      inputs = self.fixed_padding(inputs)
    return self.conv2d(inputs)


class SE_Layer(keras.layers.Layer):  # pylint: disable=invalid-name  (Keras name `se__layer`)
  """Squeeze-and-excitation; the expand width is the input width, set when built."""

  def __init__(self, filters, se_ratio, **kwargs):
    super().__init__(**kwargs)
    self.se_reduce = keras.layers.Conv2D(
        max(1, int(filters * se_ratio)), (1, 1), strides=(1, 1), padding='same', use_bias=True,
        kernel_initializer=conv_initializer())
    # Constructed here (so Keras' name counters match the reference); width fixed in build().
    self.se_expand = keras.layers.Conv2D(
        1, (1, 1), strides=(1, 1), padding='same', use_bias=True,
        kernel_initializer=conv_initializer())

  def build(self, input_shape):
    self.se_expand.filters = int(input_shape[-1])
    super().build(input_shape)

  def call(self, inputs):
    squeezed = tf.reduce_mean(inputs, [1, 2], keepdims=True)
    excited = self.se_expand(tf.nn.relu(self.se_reduce(squeezed)))
    return tf.sigmoid(excited) * inputs


class SK_Conv2D(keras.layers.Layer):  # pylint: disable=invalid-name  (Keras name `sk__conv2d`)
  """Selective-kernel 3x3 conv: two streams mixed by a softmax attention over streams."""

  def __init__(self, filters, strides, sk_ratio, norm: NormSettings, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    mid_dim = max(int(filters * sk_ratio), SK_MIN_DIM)
    self.conv2d_fixed_padding = Conv2dFixedPadding(2 * filters, 3, strides)
    self.batch_norm_relu = BatchNormRelu(norm)
    self.conv2d_0 = keras.layers.Conv2D(mid_dim, (1, 1), strides=1, padding='same',
                                        use_bias=False, kernel_initializer=conv_initializer())
    self.batch_norm_relu_1 = BatchNormRelu(norm)
    self.conv2d_1 = keras.layers.Conv2D(2 * filters, (1, 1), strides=1, padding='same',
                                        use_bias=False, kernel_initializer=conv_initializer())

  def call(self, inputs, training):
    streams = self.batch_norm_relu(self.conv2d_fixed_padding(inputs), training=training)
    streams = tf.stack(tf.split(streams, 2, axis=-1), axis=0)  # [2, B, H, W, f]
    global_features = tf.reduce_mean(tf.reduce_sum(streams, axis=0), [1, 2], keepdims=True)
    global_features = self.batch_norm_relu_1(self.conv2d_0(global_features), training=training)
    mixing = tf.stack(tf.split(self.conv2d_1(global_features), 2, axis=-1), axis=0)
    mixing = tf.nn.softmax(mixing, axis=0)
    return tf.reduce_sum(streams * mixing, axis=0)


def _resnet_d_shortcut(filters, strides, norm):
  """[FixedPadding(2) if strided, 2x2 average pool, 1x1 conv, BN] (ResNet-D)."""
  layers = [FixedPadding(2)] if strides > 1 else []
  layers.append(keras.layers.AveragePooling2D(
      pool_size=2, strides=strides, padding='SAME' if strides == 1 else 'VALID'))
  layers.append(Conv2dFixedPadding(filters, 1, 1))
  layers.append(BatchNormRelu(norm, relu=False))
  return layers


def _shortcut(filters, strides, sk_ratio, norm):
  if sk_ratio > 0:
    return _resnet_d_shortcut(filters, strides, norm)
  return [Conv2dFixedPadding(filters, 1, strides), BatchNormRelu(norm, relu=False)]


def _apply(layers, inputs, training):
  for layer in layers:
    inputs = layer(inputs, training=training)
  return inputs


class ResidualBlock(keras.layers.Layer):
  """Basic block (ResNet-18/34): two 3x3 convs; SK never used here, only ResNet-D shortcuts."""

  def __init__(self, filters, strides, use_projection, norm, sk_ratio=0., se_ratio=0.,
               **kwargs):
    super().__init__(**kwargs)
    self.conv2d_bn_layers = []
    self.shortcut_layers = []
    if use_projection:
      self.shortcut_layers.extend(_shortcut(filters, strides, sk_ratio, norm))
    self.conv2d_bn_layers.extend([
        Conv2dFixedPadding(filters, 3, strides),
        BatchNormRelu(norm),
        Conv2dFixedPadding(filters, 3, 1),
        BatchNormRelu(norm, relu=False, init_zero=True),
    ])
    if se_ratio > 0:
      self.se_layer = SE_Layer(filters, se_ratio)

  def call(self, inputs, training):
    shortcut = _apply(self.shortcut_layers, inputs, training)
    outputs = _apply(self.conv2d_bn_layers, inputs, training)
    if hasattr(self, 'se_layer'):
      outputs = self.se_layer(outputs)
    return tf.nn.relu(outputs + shortcut)


class BottleneckBlock(keras.layers.Layer):
  """1x1 -> 3x3 (or SK) -> 1x1 (x4) block for depth >= 50."""

  def __init__(self, filters, strides, use_projection, norm, sk_ratio=0., se_ratio=0.,
               **kwargs):
    super().__init__(**kwargs)
    self.projection_layers = []
    if use_projection:
      self.projection_layers.extend(_shortcut(4 * filters, strides, sk_ratio, norm))
    self.shortcut_dropblock = DropBlock()
    self.conv_relu_dropblock_layers = [
        Conv2dFixedPadding(filters, 1, 1), BatchNormRelu(norm), DropBlock()]
    if sk_ratio > 0:
      self.conv_relu_dropblock_layers.extend([
          SK_Conv2D(filters, strides, sk_ratio, norm), DropBlock()])
    else:
      self.conv_relu_dropblock_layers.extend([
          Conv2dFixedPadding(filters, 3, strides), BatchNormRelu(norm), DropBlock()])
    self.conv_relu_dropblock_layers.extend([
        Conv2dFixedPadding(4 * filters, 1, 1),
        BatchNormRelu(norm, relu=False, init_zero=True),
        DropBlock()])
    if se_ratio > 0:
      self.conv_relu_dropblock_layers.append(SE_Layer(filters, se_ratio))

  def call(self, inputs, training):
    shortcut = self.shortcut_dropblock(_apply(self.projection_layers, inputs, training))
    outputs = _apply(self.conv_relu_dropblock_layers, inputs, training)
    return tf.nn.relu(outputs + shortcut)


class BlockGroup(keras.layers.Layer):
  """`num_blocks` blocks; the first has a projection shortcut and the group stride."""

  def __init__(self, filters, block_class, num_blocks, strides, norm, sk_ratio, se_ratio,
               **kwargs):
    super().__init__(**kwargs)
    self.layers = []
    for index in range(num_blocks):
      self.layers.append(block_class(
          filters, strides if index == 0 else 1, use_projection=(index == 0), norm=norm,
          sk_ratio=sk_ratio, se_ratio=se_ratio))

  def call(self, inputs, training):
    return tf.identity(_apply(self.layers, inputs, training), name=self.name)


def _stem(width, cifar_stem, sk_ratio, norm, trainable):
  """The `initial_conv_relu_max_pool` list: CIFAR, ImageNet or ResNet-D stem.

  Contents: docs/architecture-notes.md, "Stems".
  """
  def frozen(layer_class, *args, **kwargs):
    return layer_class(*args, trainable=trainable, **kwargs)

  if cifar_stem:
    return [frozen(Conv2dFixedPadding, 64 * width, 3, 1),
            frozen(IdentityLayer, name='initial_conv'),
            frozen(BatchNormRelu, norm),
            frozen(IdentityLayer, name='initial_max_pool')]
  layers = []
  if sk_ratio > 0:  # ResNet-D deep stem: three 3x3 convs
    layers += [frozen(Conv2dFixedPadding, 64 * width // 2, 3, 2),
               frozen(BatchNormRelu, norm),
               frozen(Conv2dFixedPadding, 64 * width // 2, 3, 1),
               frozen(BatchNormRelu, norm),
               frozen(Conv2dFixedPadding, 64 * width, 3, 1)]
  else:
    layers.append(frozen(Conv2dFixedPadding, 64 * width, 7, 2))
  layers += [frozen(IdentityLayer, name='initial_conv'),
             frozen(BatchNormRelu, norm),
             frozen(keras.layers.MaxPooling2D, pool_size=3, strides=2, padding='SAME'),
             frozen(IdentityLayer, name='initial_max_pool')]
  return layers


class Resnet(keras.layers.Layer):
  """The encoder: stem, four block groups, global average pool -> [N, 512w or 2048w].

  `fine_tune_after_block` (finetune only): parts up to that block are frozen (not in
  `trainable_variables`) and a stop_gradient is placed after them; table in
  docs/architecture-notes.md, "Freezing".
  """

  def __init__(self, resnet_depth=50, width_multiplier=1, cifar_stem=False, sk_ratio=0.,
               se_ratio=0., norm: Optional[NormSettings] = None, finetune=False,
               fine_tune_after_block=-1, freeze_bn_stats_when_frozen=True, **kwargs):
    super().__init__(**kwargs)
    if resnet_depth not in BLOCK_COUNTS:
      raise ValueError(f'resnet_depth={resnet_depth} is not one of {sorted(BLOCK_COUNTS)}')
    norm = norm or NormSettings()
    ftab = fine_tune_after_block if finetune else -1
    self._ftab = ftab
    self._freeze_bn_stats = freeze_bn_stats_when_frozen
    self._stem_frozen = ftab != -1
    # Group g (1-based) trains iff -1 <= ftab < g; out-of-range values freeze the whole encoder.
    self._group_frozen = [not -1 <= ftab < g for g in range(1, 5)]
    block_class = BottleneckBlock if resnet_depth >= BOTTLENECK_MIN_DEPTH else ResidualBlock
    self.initial_conv_relu_max_pool = _stem(width_multiplier, cifar_stem, sk_ratio, norm,
                                            trainable=not self._stem_frozen)
    self.block_groups = []
    for index, (num_blocks, strides) in enumerate(zip(BLOCK_COUNTS[resnet_depth],
                                                      BLOCK_GROUP_STRIDES)):
      self.block_groups.append(BlockGroup(
          64 * width_multiplier * 2 ** index, block_class, num_blocks, strides, norm,
          sk_ratio, se_ratio, name=f'block_group{index + 1}',
          trainable=not self._group_frozen[index]))

  def call(self, inputs, training, endpoints=None):
    """Returns [N, C]; fills `endpoints` (a dict) with the intermediate outputs if given."""
    endpoints = {} if endpoints is None else endpoints
    outputs = inputs
    stem_training = frozen_training(training, self._stem_frozen, self._freeze_bn_stats)
    for layer in self.initial_conv_relu_max_pool:
      outputs = layer(outputs, training=stem_training)
      if isinstance(layer, IdentityLayer):
        endpoints[layer.name] = outputs
    for index, group in enumerate(self.block_groups):
      if self._ftab == index:
        outputs = tf.stop_gradient(outputs)
      outputs = group(outputs, training=frozen_training(
          training, self._group_frozen[index], self._freeze_bn_stats))
      endpoints[f'block_group{index + 1}'] = outputs
    if self._ftab == 4:
      outputs = tf.stop_gradient(outputs)
    outputs = tf.identity(tf.reduce_mean(outputs, [1, 2]), name='final_avg_pool')
    endpoints['final_avg_pool'] = outputs
    return outputs
