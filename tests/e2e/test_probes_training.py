"""The kNN monitor during training and the fair random-init encoder (batch-norm statistics
recomputed from the data)."""

import math
import types

import numpy as np
import tensorflow as tf

from simclr_tf2.network.checkpoint import object_keys
from tensorboard_events import read_scalars
from simclr_tf2.inference import probes
from simclr_tf2.config import Config
from simclr_tf2.data import get_source
from simclr_tf2.inference.embeddings import eval_images
from simclr_tf2.network.model import build_model
from simclr_tf2.training.knn_monitor import KnnMonitor

NUM_CLASSES = 4
TEST_COUNT = 400
# Shuffled labels: predictions are independent of the (uniform) test labels, so accuracy ~
# Binomial(400, 1/4) / 400: mean 0.25, sd sqrt(0.25 * 0.75 / 400) = 0.0217. +-5 sd is never
# crossed by chance (the rng is seeded anyway) but catches any leak of the labels.
CHANCE_LOW, CHANCE_HIGH = 0.25 - 5 * 0.0217, 0.25 + 5 * 0.0217


def test_knn_monitor_every_n_steps(tmp_path):
  size, count = 16, 24
  model = build_model(10, resnet_depth=18, image_size=size, proj_out_dim=8).create_variables()
  source = get_source('digits', image_size=size)
  writer = tf.summary.create_file_writer(str(tmp_path))
  trainer = types.SimpleNamespace(task=types.SimpleNamespace(model=model, strategy=None),
                                  summary_writer=writer)
  monitor = KnnMonitor(3, source, 'train', 'test', batch_size=16, k=5,
                              max_train_examples=count, max_eval_examples=count)
  logs = {}
  monitor.on_train_begin(trainer)
  for step in (1, 2, 4, 5):  # crosses a multiple of 3 once, at the block ending at step 4
    monitor.on_block_end(trainer, step, logs)
  monitor.on_train_end(trainer, 5)

  def features(split):
    images, labels = next(eval_images(source, split, size, count).batch(count)
                          .as_numpy_iterator())
    return model.call_with_endpoints(images)['final_avg_pool'].numpy(), labels

  expected = probes.knn_accuracy(*features('train'), *features('test'), k=5)
  assert [step for step, _ in monitor.history] == [4]
  recorded = read_scalars(tmp_path)[probes.KNN_SCALAR]
  assert recorded[0][0] == 4 and math.isclose(recorded[0][1], expected, abs_tol=1e-6)
  assert logs[probes.KNN_SCALAR] == monitor.history[0][1]


def test_random_init_encoder_gets_batch_norm_statistics_from_the_data():
  from simclr_tf2.inference.ablation import random_init_encoder  # pylint: disable=import-outside-toplevel
  size = 8
  config = Config(resnet_depth=18, image_size=size, proj_out_dim=8)
  source = get_source('digits', image_size=size)
  model = random_init_encoder(config, source, 'train', batch_size=500)  # batches 500, 500, 437
  variables = {key.split('/.ATTRIBUTES')[0]: v for key, v in
               object_keys(model=model).items()}
  stem = 'model/resnet_model/initial_conv_relu_max_pool/'
  kernel = variables[stem + '0/conv2d/kernel']
  # The first batch norm sees the stem convolution (3x3, stride 1, no bias) of the images: its
  # statistics must be those of that convolution over the whole train split, computed here
  # with numpy, not the initial zeros and ones.
  images = next(eval_images(source, 'train', size).batch(2000).as_numpy_iterator())[0]
  assert len(images) == 1437
  conv = tf.nn.conv2d(images, kernel, 1, 'SAME').numpy().astype(np.float64)
  data_mean, data_variance = conv.mean(axis=(0, 1, 2)), conv.var(axis=(0, 1, 2))
  assert np.abs(data_mean).max() > 0.1 * np.sqrt(data_variance.max())  # zeros would fail
  np.testing.assert_allclose(variables[stem + '2/bn/moving_mean'].numpy(), data_mean,
                             rtol=1e-4, atol=1e-6 * np.sqrt(data_variance.max()))
  # Each batch's variance is Bessel-corrected (n/(n-1), n = its images x 64 positions).
  np.testing.assert_allclose(variables[stem + '2/bn/moving_variance'].numpy(), data_variance,
                             rtol=1e-3)
  assert not model.has_supervised_head
