"""Random Gaussian blur applied inside the model during pretraining (K36).

Kn: defect numbers of the official code, listed in docs/differences.md.
"""

import tensorflow as tf

SIGMA_RANGE = (0.1, 2.0)


def gaussian_blur(images, kernel_size, sigma):
  """Separable Gaussian blur of [B, H, W, C] images with zero 'SAME' padding (borders darken).

  The kernel has 2 * int(kernel_size / 2) + 1 taps, like the reference.
  """
  radius = int(kernel_size / 2)
  offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
  sigma = tf.cast(sigma, tf.float32)
  weights = tf.exp(-tf.square(offsets) / (2. * tf.square(sigma)))
  weights /= tf.reduce_sum(weights)
  channels = tf.shape(images)[-1]
  horizontal = tf.tile(tf.reshape(weights, [1, -1, 1, 1]), [1, 1, channels, 1])
  vertical = tf.tile(tf.reshape(weights, [-1, 1, 1, 1]), [1, 1, channels, 1])
  blurred = tf.nn.depthwise_conv2d(images, horizontal, [1, 1, 1, 1], 'SAME')
  return tf.nn.depthwise_conv2d(blurred, vertical, [1, 1, 1, 1], 'SAME')


def random_blur(images, image_size, probability=0.5, seed=None):
  """Blurs each image of the batch with probability `probability`, one sigma for the whole batch.

  The kernel size comes from the `image_size` setting (image_size // 10), not from the tensor.
  `seed` (int [2] tensor): stateless draws from it; None: the global random generator.
  """
  selector_shape = [tf.shape(images)[0], 1, 1, 1]
  if seed is None:
    sigma = tf.random.uniform([], *SIGMA_RANGE, dtype=tf.float32)
    draws = tf.random.uniform(selector_shape)
  else:
    sigma_seed, selector_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    sigma = tf.random.stateless_uniform([], sigma_seed, *SIGMA_RANGE, dtype=tf.float32)
    draws = tf.random.stateless_uniform(selector_shape, selector_seed)
  blurred = gaussian_blur(images, image_size // 10, sigma)
  selector = tf.cast(draws < probability, images.dtype)
  return tf.clip_by_value(blurred * selector + images * (1. - selector), 0., 1.)
