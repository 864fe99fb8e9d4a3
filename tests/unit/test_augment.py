"""Augmentations (K23, K24): shapes, ranges, crop geometry, colour semantics.

Kn: defect numbers of the official code, listed in docs/differences.md.
"""

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.data import augment

RNG = np.random.RandomState(0)
COLOURFUL = RNG.randint(0, 256, (24, 20, 3)).astype(np.uint8)


def _seed(i):
  return tf.constant([i, 7], tf.int32)


@tf.function
def _train_views(image, size, strength, seeds):
  return tf.map_fn(
      lambda s: augment.preprocess_image(image, size, size, True, strength, seed=s),
      seeds, fn_output_signature=tf.float32)


def _many_train_views(image, size, strength, count):
  seeds = tf.stack([_seed(i) for i in range(count)])
  return _train_views(tf.constant(image), size, strength, seeds).numpy()


@pytest.mark.parametrize('is_training', [True, False])
@pytest.mark.parametrize('image', [COLOURFUL, COLOURFUL.astype(np.float32) / 255.])
def test_output_shape_dtype_and_range(is_training, image):
  out = augment.preprocess_image(tf.constant(image), 16, 16, is_training, 1.0, test_crop=True,
                                 seed=_seed(1))
  assert out.shape == (16, 16, 3) and out.dtype == tf.float32
  assert 0. <= out.numpy().min() and out.numpy().max() <= 1.


def test_fixed_seed_is_deterministic_and_seeds_differ():
  image = tf.constant(COLOURFUL)
  first = augment.preprocess_image(image, 16, 16, True, 1.0, seed=_seed(3)).numpy()
  again = augment.preprocess_image(image, 16, 16, True, 1.0, seed=_seed(3)).numpy()
  other = augment.preprocess_image(image, 16, 16, True, 1.0, seed=_seed(4)).numpy()
  np.testing.assert_array_equal(first, again)
  assert np.abs(first - other).max() > 0.05


@pytest.mark.parametrize('image_hw, out_hw, expected', [
    ((100, 80), (64, 64), (15, 5, 70, 70)),   # rint(0.875*80)=70, offsets (30+1)//2, (10+1)//2
    ((84, 84), (64, 64), (5, 5, 74, 74)),     # 0.875*84 = 73.5 rounds half to even -> 74
    ((100, 100), (32, 64), (28, 6, 44, 88)),  # wide output: rint(43.75)=44, rint(87.5)=88
    ((60, 120), (64, 64), (4, 34, 52, 52)),   # wider image: rint(52.5)=52, (8+1)//2, (68+1)//2
    ((101, 101), (64, 64), (7, 7, 88, 88)),   # rint(88.375)=88, odd margin 13 -> (13+1)//2=7
])
def test_center_crop_window(image_hw, out_hw, expected):
  window = augment.center_crop_window(*image_hw, *out_hw)
  assert tuple(int(v) for v in window) == expected


def test_eval_crop_takes_the_centre_window():
  # A 99x80 image that is 200 inside the expected 70x70 window [15:85, 5:75] (offsets
  # (29+1)//2 and (10+1)//2) and 0 elsewhere: a crop shifted by one pixel would bring in zeros.
  image = np.zeros((99, 80, 3), np.uint8)
  image[15:85, 5:75] = 200
  out = augment.preprocess_image(tf.constant(image), 64, 64, False, test_crop=True).numpy()
  assert out.shape == (64, 64, 3)
  np.testing.assert_allclose(out, 200. / 255., atol=1e-5)
  # Same crop at output size 70 needs no resampling: exact pixels.
  coords = RNG.randint(0, 256, (99, 80, 3)).astype(np.uint8)
  out70 = augment.preprocess_image(tf.constant(coords), 70, 70, False, test_crop=True).numpy()
  np.testing.assert_allclose(out70, coords[15:85, 5:75] / 255., atol=1e-6)


def test_small_eval_resizes_mismatched_images_k23():
  out = augment.preprocess_image(tf.constant(COLOURFUL), 32, 32, False, test_crop=False)
  assert out.shape == (32, 32, 3)
  exact = RNG.randint(0, 256, (32, 32, 3)).astype(np.uint8)
  same = augment.preprocess_image(tf.constant(exact), 32, 32, False, test_crop=False).numpy()
  np.testing.assert_allclose(same, exact / 255., atol=1e-6)


@pytest.mark.parametrize('strength', [-0.1, 1.3, 3.0])
def test_invalid_color_jitter_strength_is_a_clear_error_k24(strength):
  with pytest.raises(ValueError, match=r'color_jitter_strength=.*\[0, 1.25\]'):
    augment.preprocess_image(tf.constant(COLOURFUL), 8, 8, True, strength)


def test_max_color_jitter_strength_is_accepted():
  out = augment.preprocess_image(tf.constant(COLOURFUL), 8, 8, True, 1.25, seed=_seed(0))
  assert out.shape == (8, 8, 3)


def test_strength_zero_only_crops_and_flips():
  # A constant colour survives crop, flip and resize unchanged; any colour op would change it.
  colour = np.array([51, 128, 204], np.uint8)
  views = _many_train_views(np.tile(colour, (12, 10, 1)), 8, 0., 20)
  np.testing.assert_allclose(views, np.broadcast_to(colour / 255., views.shape), atol=1e-5)


def test_gray_image_stays_gray_without_colour_jitter():
  gray = np.repeat(RNG.randint(0, 256, (12, 10, 1)), 3, axis=-1).astype(np.uint8)
  views = _many_train_views(gray, 8, 0., 10)
  np.testing.assert_array_equal(views[..., 0], views[..., 1])
  np.testing.assert_array_equal(views[..., 1], views[..., 2])


def test_colour_distortion_probabilities():
  # Jitter never makes a colourful image exactly gray (saturation factor >= 0.2), so exactly-gray
  # outputs count the grayscale op: p = 0.2 -> 40 of 200 expected (sd 5.7); 0.8 would give 160.
  colour = np.array([200, 40, 90], np.uint8)
  views = _many_train_views(np.tile(colour, (8, 8, 1)), 6, 1.0, 200)
  is_gray = np.all(np.abs(views[..., 0] - views[..., 1]) < 1e-6, axis=(1, 2)) & np.all(
      np.abs(views[..., 1] - views[..., 2]) < 1e-6, axis=(1, 2))
  assert 20 <= is_gray.sum() <= 60
  # Jitter applies with p = 0.8: colour (non-gray) views that still show the input colour are
  # the ~0.8 * 0.2 = 16 % that skipped it (expected 32 of 200).
  unchanged = np.all(np.abs(views - colour / 255.) < 1e-5, axis=(1, 2, 3))
  assert 14 <= unchanged.sum() <= 52


def test_brightness_is_multiplicative_with_reference_range():
  image = tf.fill([4, 4, 3], 0.5)
  factors = np.array([augment.random_brightness(image, 0.8, _seed(i)).numpy()[0, 0, 0] / 0.5
                      for i in range(60)])
  assert factors.min() >= 0.2 - 1e-6 and factors.max() < 1.8
  assert factors.min() < 0.5 and factors.max() > 1.5  # spread over U[0.2, 1.8)


def test_grayscale_uses_luma_weights():
  pixel = tf.constant([[[1., 0.5, 0.25]]])
  expected = 0.2989 * 1. + 0.5870 * 0.5 + 0.1140 * 0.25
  np.testing.assert_allclose(augment.to_grayscale(pixel).numpy(), [[[expected] * 3]], atol=1e-4)


def test_random_crop_window_area_and_aspect():
  seeds = tf.stack([_seed(i) for i in range(400)])
  windows = tf.map_fn(lambda s: tf.stack(augment.random_crop_window([100, 120, 3], 8, 8, s)),
                      seeds).numpy()
  offset_y, offset_x, crop_h, crop_w = windows.T
  assert (offset_y >= 0).all() and (offset_y + crop_h <= 100).all()
  assert (offset_x >= 0).all() and (offset_x + crop_w <= 120).all()
  area = crop_h * crop_w / (100. * 120.)
  # min_object_covered=0.1 over the full-image box raises the 0.08 area floor to 0.10.
  assert area.min() >= 0.1 and area.min() < 0.2 and area.max() > 0.9
  ratio = crop_w / crop_h  # integer sizes blur the [3/4, 4/3] bounds slightly
  assert ratio.min() > 0.7 and ratio.max() < 1.4


def test_random_resized_crop_resizes_a_crop():
  # Pixel values encode the column, so a crop shows a contiguous, increasing range of them.
  columns = np.tile(np.arange(100, dtype=np.float32)[None, :, None] / 255., (60, 1, 3))
  crop = augment.random_resized_crop(tf.constant(columns), 16, 16, _seed(3)).numpy()
  assert crop.shape == (16, 16, 3)
  assert (np.diff(crop[8, :, 0]) > 0).all() and crop[..., 0].max() - crop[..., 0].min() > 0.05


def test_training_flips_half_of_the_views():
  ramp = np.tile(np.arange(0, 200, 2, dtype=np.uint8)[None, :, None], (60, 1, 3))
  rows = _many_train_views(ramp, 16, 0., 60)[:, 8, :, 0]
  increasing = (np.diff(rows, axis=1) > 0).all(axis=1)
  decreasing = (np.diff(rows, axis=1) < 0).all(axis=1)
  assert (increasing | decreasing).all()
  assert 15 <= decreasing.sum() <= 45  # Binomial(60, 0.5): mean 30, sd 3.9


def test_crop_min_area_raises_the_area_floor():
  seeds = tf.stack([_seed(i) for i in range(400)])
  windows = tf.map_fn(
      lambda s: tf.stack(augment.random_crop_window([100, 120, 3], 8, 8, s, min_area=0.5)),
      seeds).numpy()
  area = windows[:, 2] * windows[:, 3] / (100. * 120.)
  assert area.min() >= 0.5 and area.min() < 0.6 and area.max() > 0.9


def test_without_horizontal_flip_no_view_is_mirrored_and_crops_stay_the_same():
  ramp = np.tile(np.arange(0, 200, 2, dtype=np.uint8)[None, :, None], (60, 1, 3))

  def views(flip):
    return np.stack([augment.preprocess_image(tf.constant(ramp), 16, 16, True, 0., seed=_seed(i),
                                              horizontal_flip=flip).numpy() for i in range(30)])

  flipped, unflipped = views(True), views(False)
  assert (np.diff(unflipped[:, 8, :, 0], axis=1) > 0).all()  # every row still increases
  mirrored = (np.diff(flipped[:, 8, :, 0], axis=1) < 0).all(axis=1)
  assert 0 < mirrored.sum() < 30
  # The same seed gives the same crop: a flipped view is the unflipped one mirrored.
  np.testing.assert_allclose(flipped[mirrored], unflipped[mirrored][:, :, ::-1], atol=1e-6)
  np.testing.assert_array_equal(flipped[~mirrored], unflipped[~mirrored])


@pytest.mark.parametrize('area', [0., -0.1, 1.5, float('nan')])
def test_invalid_crop_min_area_is_a_clear_error(area):
  with pytest.raises(ValueError, match=r'--crop_min_area=.*'):
    augment.preprocess_image(tf.constant(COLOURFUL), 8, 8, True, 0., crop_min_area=area)
