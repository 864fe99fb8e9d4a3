"""SimCLR image augmentations as pure TensorFlow ops (K23, K24, K35).

Every random op is *stateless*: it takes a `seed` (int tensor of shape [2]) split from the one seed
given to `preprocess_image`. The distributions and the order of operations are those of the
reference (which used unseeded stateful ops); a fixed seed makes an augmentation reproducible and
independent of tf.data parallelism. `seed=None` draws a fresh seed, i.e. reference behaviour.
The Gaussian blur is not here: it runs inside the model (blur.py).
Kn: defect numbers of the official code, listed in docs/differences.md.
"""

import functools

import tensorflow as tf

from simclr_tf2.config import CROP_MIN_AREA, check_range

CROP_PROPORTION = 0.875  # eval centre crop: 87.5 % of the limiting side, then resize
CROP_MIN_OBJECT_COVERED = 0.1  # with the full image as the only box, also a 10 % area floor
CROP_MAX_ATTEMPTS = 100
COLOR_JITTER_PROBABILITY = 0.8
GRAYSCALE_PROBABILITY = 0.2
_INT32_MAX = 2**31 - 1


def random_seed():
  """A fresh stateless seed from the global (stateful) RNG: the unseeded reference behaviour."""
  return tf.random.uniform([2], 0, _INT32_MAX, dtype=tf.int32)


def _split(seed, num):
  return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def _with_probability(probability, fn, image, seed):
  """fn(image) if u < probability, u ~ U[0, 1) drawn once per image; else image."""
  apply = tf.random.stateless_uniform([], seed) < probability
  return tf.cond(apply, lambda: fn(image), lambda: image)


# --- geometry ---------------------------------------------------------------------------------

def random_crop_window(image_shape, height, width, seed, min_area=CROP_MIN_AREA):
  """(offset_y, offset_x, crop_height, crop_width) of an Inception-style random crop.

  Area `min_area`..100 % of the image (the reference: 8 %, effectively >= 10 %, see
  CROP_MIN_OBJECT_COVERED), aspect ratio within [3/4, 4/3] times the output's; the whole image
  if 100 attempts find nothing.
  """
  aspect = width / height
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_shape,
      bounding_boxes=tf.constant([0., 0., 1., 1.], shape=[1, 1, 4]),
      seed=seed,
      min_object_covered=CROP_MIN_OBJECT_COVERED,
      aspect_ratio_range=(3. / 4. * aspect, 4. / 3. * aspect),
      area_range=(min_area, 1.),
      max_attempts=CROP_MAX_ATTEMPTS,
      use_image_if_no_bounding_boxes=True)
  return begin[0], begin[1], size[0], size[1]


def random_resized_crop(image, height, width, seed, min_area=CROP_MIN_AREA):
  """A random crop (random_crop_window) resized bicubically to (height, width)."""
  window = random_crop_window(tf.shape(image), height, width, seed, min_area)
  image = tf.image.crop_to_bounding_box(image, *window)
  return tf.image.resize(image, [height, width], method=tf.image.ResizeMethod.BICUBIC)


def center_crop_window(image_height, image_width, height, width,
                       crop_proportion=CROP_PROPORTION):
  """(offset_y, offset_x, crop_height, crop_width) of the eval centre crop, as int32 tensors.

  The crop keeps the output aspect ratio and covers `crop_proportion` of the limiting side;
  sides are rounded half-to-even and offsets round up, like the reference.
  """
  image_height = tf.cast(image_height, tf.float32)
  image_width = tf.cast(image_width, tf.float32)
  aspect = width / height

  def relatively_taller():
    return crop_proportion / aspect * image_width, crop_proportion * image_width

  def relatively_wider():
    return crop_proportion * image_height, crop_proportion * aspect * image_height

  crop_height, crop_width = tf.cond(aspect > image_width / image_height,
                                    relatively_taller, relatively_wider)
  crop_height = tf.cast(tf.math.rint(crop_height), tf.int32)
  crop_width = tf.cast(tf.math.rint(crop_width), tf.int32)
  offset_y = (tf.cast(image_height, tf.int32) - crop_height + 1) // 2
  offset_x = (tf.cast(image_width, tf.int32) - crop_width + 1) // 2
  return offset_y, offset_x, crop_height, crop_width


def center_crop(image, height, width, crop_proportion=CROP_PROPORTION):
  """Eval centre crop followed by a bicubic resize to (height, width)."""
  shape = tf.shape(image)
  window = center_crop_window(shape[0], shape[1], height, width, crop_proportion)
  image = tf.image.crop_to_bounding_box(image, *window)
  return tf.image.resize(image, [height, width], method=tf.image.ResizeMethod.BICUBIC)


def resize_if_needed(image, height, width):
  """Bicubic resize only when the image is not already height x width (K23 fix).

  The reference does no resize at image_size <= 32 and fails on any other size (upstream #163).
  """
  shape = tf.shape(image)
  exact = tf.logical_and(tf.equal(shape[0], height), tf.equal(shape[1], width))
  return tf.cond(
      exact, lambda: image,
      lambda: tf.image.resize(image, [height, width], method=tf.image.ResizeMethod.BICUBIC))


# --- colour -----------------------------------------------------------------------------------

def to_grayscale(image):
  """Luma (0.2989, 0.5870, 0.1140) tiled back to 3 channels."""
  return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def random_brightness(image, max_delta, seed):
  """simclrv2 brightness: multiply by a factor ~ U[max(1 - max_delta, 0), 1 + max_delta)."""
  factor = tf.random.stateless_uniform(
      [], seed, minval=max(1. - max_delta, 0.), maxval=1. + max_delta)
  return image * factor


def color_jitter(image, strength, seed):
  """Brightness, contrast, saturation (0.8 s) and hue (0.2 s) in a random order, each clipped."""
  brightness = contrast = saturation = 0.8 * strength
  hue = 0.2 * strength
  order_seed, *op_seeds = _split(seed, 5)
  # argsort of i.i.d. uniforms is a uniformly random permutation, like tf.random.shuffle.
  order = tf.argsort(tf.random.stateless_uniform([4], order_seed))
  ops = (
      lambda x, s: random_brightness(x, brightness, s),
      lambda x, s: tf.image.stateless_random_contrast(x, 1. - contrast, 1. + contrast, s),
      lambda x, s: tf.image.stateless_random_saturation(x, 1. - saturation, 1. + saturation, s),
      lambda x, s: tf.image.stateless_random_hue(x, hue, s),
  )
  for position, op_seed in enumerate(op_seeds):
    branches = [functools.partial(op, image, op_seed) for op in ops]
    image = tf.clip_by_value(tf.switch_case(order[position], branches), 0., 1.)
  return image


def random_color_jitter(image, strength, seed):
  """Colour jitter with probability 0.8, then (independently) grayscale with probability 0.2."""
  jitter_seed, apply_jitter_seed, apply_gray_seed = _split(seed, 3)
  image = _with_probability(COLOR_JITTER_PROBABILITY,
                            lambda x: color_jitter(x, strength, jitter_seed),
                            image, apply_jitter_seed)
  return _with_probability(GRAYSCALE_PROBABILITY, to_grayscale, image, apply_gray_seed)


# --- entry points -----------------------------------------------------------------------------

def preprocess_for_train(image, height, width, color_jitter_strength, seed,
                         crop_min_area=CROP_MIN_AREA, horizontal_flip=True):
  """Random resized crop, random flip (if `horizontal_flip`), then colour distortion if the
  strength is > 0. The seed split does not depend on the options: a view keeps its crop and
  colours when the flip is turned off."""
  crop_seed, flip_seed, color_seed = _split(seed, 3)
  image = random_resized_crop(image, height, width, crop_seed, crop_min_area)
  if horizontal_flip:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  if color_jitter_strength > 0:
    image = random_color_jitter(image, color_jitter_strength, color_seed)
  return image


def preprocess_for_eval(image, height, width, test_crop):
  """Centre crop + resize when test_crop (image_size > 32); else resize only if sizes differ."""
  if test_crop:
    return center_crop(image, height, width)
  return resize_if_needed(image, height, width)


def preprocess_image(image, height, width, is_training, color_jitter_strength=0.,
                     test_crop=True, seed=None, crop_min_area=CROP_MIN_AREA,
                     horizontal_flip=True):
  """One SimCLR view of `image` ([H, W, 3], uint8 in [0, 255] or float in [0, 1]).

  Returns float32 [height, width, 3] in [0, 1]. `color_jitter_strength` (0 disables colour
  jitter and grayscale), `crop_min_area` and `horizontal_flip` only matter in training;
  `test_crop` only in evaluation. `seed` is an int tensor of shape [2] for a reproducible
  training augmentation (None = fresh randomness).
  """
  check_range('color_jitter_strength', color_jitter_strength)  # K24: called without a Config
  check_range('crop_min_area', crop_min_area)
  image = tf.image.convert_image_dtype(image, tf.float32)
  if is_training:
    seed = random_seed() if seed is None else seed
    image = preprocess_for_train(image, height, width, color_jitter_strength, seed,
                                 crop_min_area, horizontal_flip)
  else:
    image = preprocess_for_eval(image, height, width, test_crop)
  image = tf.reshape(image, [height, width, 3])
  return tf.clip_by_value(image, 0., 1.)
