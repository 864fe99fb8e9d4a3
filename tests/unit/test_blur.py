"""The pretraining Gaussian blur (simclr_tf2/network/blur.py) against a blur computed by hand in NumPy.

What the reference does, and what the hand computation below encodes independently:
* `kernel_size` gives `radius = int(kernel_size / 2)` and a kernel of `2 * radius + 1` taps at
  offsets -radius..radius (so kernel sizes 6 and 7 both give 7 taps, 1 gives the identity);
* the 1-D weights are exp(-x^2 / (2 sigma^2)) normalised to sum 1, and the blur is separable:
  the 2-D kernel is the outer product of the 1-D weights, the same for every channel;
* 'SAME' padding with zeros, stride 1: borders darken (a constant image of ones keeps 1 inside
  and falls to (sum of the half kernel)^2 at a corner);
* `random_blur` draws ONE sigma ~ U[0.1, 2.0) for the whole batch, blurs each image with the
  given probability, takes the kernel size from the `image_size` setting (image_size // 10), not
  from the tensor, and clips to [0, 1].
tests/e2e/test_blur_training.py runs a tiny pretraining with use_blur=true through run().
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.network import blur
from simclr_tf2.network.model import build_model


def hand_weights(kernel_size, sigma):
  radius = kernel_size // 2
  weights = np.array([math.exp(-x * x / (2. * sigma * sigma)) for x in range(-radius, radius + 1)])
  return weights / weights.sum()


def hand_blur(images, kernel_size, sigma):
  """Direct 2-D correlation with the outer-product kernel over a zero-padded copy (float64)."""
  weights = hand_weights(kernel_size, sigma)
  radius = len(weights) // 2
  images = np.asarray(images, np.float64)
  height, width = images.shape[1:3]
  padded = np.pad(images, [(0, 0), (radius, radius), (radius, radius), (0, 0)])
  out = np.zeros_like(images)
  for dy, wy in enumerate(weights):
    for dx, wx in enumerate(weights):
      out += wy * wx * padded[:, dy:dy + height, dx:dx + width, :]
  return out


def impulse(height, width, row, col, channel=1, batch=1):
  image = np.zeros([batch, height, width, 3], np.float32)
  image[0, row, col, channel] = 1.
  return image


@pytest.mark.parametrize('kernel_size, sigma, taps', [
    (1, 1.0, 1), (3, 0.5, 3), (6, 1.0, 7), (7, 1.0, 7), (9, 1.7, 9), (22, 2.0, 23)])
def test_impulse_response_is_the_normalised_separable_gaussian(kernel_size, sigma, taps):
  size = 25
  out = blur.gaussian_blur(impulse(size, size, 12, 12), kernel_size, sigma).numpy()
  radius = taps // 2
  weights = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2))
  weights /= weights.sum()
  expected = np.zeros([size, size])
  expected[12 - radius:12 + radius + 1, 12 - radius:12 + radius + 1] = np.outer(weights, weights)
  np.testing.assert_allclose(out[0, :, :, 1], expected, atol=1e-6)
  assert not out[..., 0].any() and not out[..., 2].any()  # channels stay separate
  assert out.sum() == pytest.approx(1., abs=1e-5)  # normalised


def test_zero_padding_at_the_borders():
  weights = hand_weights(7, 1.3)  # 7 taps, radius 3
  corner = blur.gaussian_blur(impulse(10, 10, 0, 0), 7, 1.3).numpy()[0, :, :, 1]
  np.testing.assert_allclose(corner[:4, :4], np.outer(weights[3:], weights[3:]), atol=1e-6)
  assert not corner[4:].any() and not corner[:, 4:].any()  # nothing reflected or wrapped
  ones = blur.gaussian_blur(np.ones([1, 10, 10, 3], np.float32), 7, 1.3).numpy()
  np.testing.assert_allclose(ones[0, 3:7, 3:7], 1., atol=1e-6)
  assert ones[0, 0, 0, 0] == pytest.approx(weights[3:].sum() ** 2, abs=1e-6)  # borders darken
  assert ones[0, 0, 5, 0] == pytest.approx(weights[3:].sum(), abs=1e-6)


@pytest.mark.parametrize('kernel_size, sigma', [(3, 0.3), (6, 1.1), (9, 1.9)])
def test_random_image_matches_the_hand_computed_blur(kernel_size, sigma):
  images = np.random.default_rng(kernel_size).uniform(size=[2, 12, 9, 3]).astype(np.float32)
  out = blur.gaussian_blur(images, kernel_size, sigma).numpy()
  np.testing.assert_allclose(out, hand_blur(images, kernel_size, sigma), atol=1e-5)


def test_random_blur_with_probability_zero_returns_the_images():
  images = np.random.default_rng(0).uniform(size=[4, 9, 9, 3]).astype(np.float32)
  np.testing.assert_array_equal(blur.random_blur(images, 32, probability=0.).numpy(), images)


def sigma_of(blurred_impulse, row, col):
  """sigma from the centre and a neighbour of a blurred impulse: w1 / w0 = exp(-1 / (2 s^2))."""
  ratio = blurred_impulse[row, col + 1] / blurred_impulse[row, col]
  return math.sqrt(-1. / (2. * math.log(ratio)))


def test_random_blur_with_probability_one_blurs_every_image_with_one_sigma():
  tf.random.set_seed(3)
  rng = np.random.default_rng(1)
  images = np.concatenate([impulse(9, 9, 4, 4),
                           rng.uniform(size=[3, 9, 9, 3]).astype(np.float32)])
  sigmas = []
  for _ in range(4):
    # image_size=32 -> kernel_size 3 -> 3 taps, whatever the tensor's own 9x9 size.
    out = blur.random_blur(images, 32, probability=1.).numpy()
    sigma = sigma_of(out[0, :, :, 1], 4, 4)
    assert blur.SIGMA_RANGE[0] <= sigma < blur.SIGMA_RANGE[1]
    np.testing.assert_allclose(out, hand_blur(images, 3, sigma), atol=1e-5)  # same for all
    assert not out[0, :, :, 1][:3].any() and not out[0, :, :, 1][6:].any()  # 3 taps only
    sigmas.append(sigma)
  assert len(set(np.round(sigmas, 4))) == 4  # a new sigma at every call


@pytest.mark.parametrize('use_blur', [True, False])
def test_model_blurs_pretraining_views_only_when_use_blur(use_blur):
  model = build_model(num_classes=10, resnet_depth=18, image_size=32, use_blur=use_blur)
  images = tf.constant(np.random.default_rng(2).uniform(size=[4, 32, 32, 6]), tf.float32)
  blurred, _ = model(images, training=True)
  plain, _ = model(images, training=True, blur=False)
  # 8 views each blurred with probability 0.5: all 8 unblurred has probability 1/256.
  assert np.allclose(blurred.numpy(), plain.numpy(), atol=1e-6) != use_blur


