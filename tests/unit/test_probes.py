"""kNN and linear probes on hand-made feature sets, score files, the KnnMonitor callback."""


import numpy as np
import pytest
from PIL import Image

from simclr_tf2.inference import probes
from tensorboard_events import read_scalars
from simclr_tf2.config import Config
from simclr_tf2.data import get_source
from simclr_tf2.training.knn_monitor import KnnMonitor

NUM_CLASSES = 4
TEST_COUNT = 400
# Shuffled labels: predictions are independent of the (uniform) test labels, so accuracy ~
# Binomial(400, 1/4) / 400: mean 0.25, sd sqrt(0.25 * 0.75 / 400) = 0.0217. +-5 sd is never
# crossed by chance (the rng is seeded anyway) but catches any leak of the labels.
CHANCE_LOW, CHANCE_HIGH = 0.25 - 5 * 0.0217, 0.25 + 5 * 0.0217


def clusters(count_per_class, seed, spread=0.05, dims=8):
  """Class c around 10 * e_c (orthogonal directions): cosine ~1 within a class, ~0 across."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(NUM_CLASSES), count_per_class)
  features = 10. * np.eye(dims)[labels] + rng.normal(0., spread * 10., (len(labels), dims))
  return features, labels


def noise(count, seed, dims=16):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((count, dims)), rng.integers(0, NUM_CLASSES, count)


def test_knn_separable_classes_are_all_right():
  train_x, train_y = clusters(30, seed=0)
  test_x, test_y = clusters(TEST_COUNT // NUM_CLASSES, seed=1)
  # k=200 exceeds the 120 training rows: all vote, but 30 x e^(~10) outweighs 90 x e^(~0).
  assert probes.knn_accuracy(train_x, train_y, test_x, test_y) == 1.0


def test_knn_shuffled_labels_are_at_chance():
  train_x, train_y = noise(800, seed=2)
  test_x, test_y = noise(TEST_COUNT, seed=3)
  assert CHANCE_LOW < probes.knn_accuracy(train_x, train_y, test_x, test_y) < CHANCE_HIGH


def test_knn_weights_by_cosine_and_temperature():
  train_x = np.array([[1., 0.], [0., 1.], [2., 2.]])  # [2, 2]: only its direction counts
  train_y = np.array([0, 1, 1])
  query = np.array([[1., 0.1]])
  # cos to the rows: 0.995, 0.0995, 0.774. With temperature 0.1 the nearest (class 0) weighs
  # e^9.95 > e^7.74 + e^0.995; with temperature 100 the weights are ~1 and class 1 has 2 votes.
  assert probes.knn_predict(train_x, train_y, query, k=3, temperature=0.1)[0] == 0
  assert probes.knn_predict(train_x, train_y, query, k=3, temperature=100.)[0] == 1
  # k=1 only asks the nearest row.
  assert probes.knn_predict(train_x, train_y, np.array([[0.1, 1.]]), k=1)[0] == 1


def test_knn_rejects_bad_arguments():
  with pytest.raises(ValueError, match='k >= 1'):
    probes.knn_predict(np.ones((2, 2)), np.array([0, 1]), np.ones((1, 2)), k=0)
  with pytest.raises(ValueError, match='labels'):
    probes.knn_accuracy(np.ones((2, 2)), np.array([0]), np.ones((1, 2)), np.array([0]))


def test_linear_probe_separable_and_shuffled():
  train_x, train_y = clusters(30, seed=4, spread=0.1)
  test_x, test_y = clusters(TEST_COUNT // NUM_CLASSES, seed=5, spread=0.1)
  result = probes.linear_probe(train_x, train_y, test_x, test_y)
  assert result['top_1_accuracy'] == 1.0
  assert result['C'] in probes.PROBE_C_GRID
  train_x, train_y = noise(400, seed=6)
  test_x, test_y = noise(TEST_COUNT, seed=7)
  chance = probes.linear_probe(train_x, train_y, test_x, test_y)['top_1_accuracy']
  assert CHANCE_LOW < chance < CHANCE_HIGH


def test_linear_probe_needs_two_classes():
  with pytest.raises(ValueError, match='single class'):
    probes.linear_probe(np.ones((4, 2)), np.zeros(4), np.ones((2, 2)), np.zeros(2))


def test_write_scores_json_and_read_scalars(tmp_path):
  path = probes.write_scores(str(tmp_path), {probes.KNN_SCALAR: 0.5, probes.PROBE_SCALAR: 0.75},
                             step=12)
  with open(path, encoding='utf-8') as f:
    assert f.read().count('0.75') == 1
  assert read_scalars(tmp_path) == {probes.KNN_SCALAR: [(12, 0.5)], probes.PROBE_SCALAR: [(12, 0.75)]}


def test_knn_monitor_needs_labels_and_positive_period(tmp_path):
  (tmp_path / 'train').mkdir()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'train' / 'blank.png')
  unlabeled = get_source('image_folder_unlabeled', str(tmp_path))
  with pytest.raises(ValueError, match='labeled'):
    KnnMonitor(1, unlabeled, 'train', 'train')
  with pytest.raises(ValueError, match='every_n_steps'):
    KnnMonitor(0, get_source('digits'), 'train', 'test')


def test_config_knn_monitor_steps():
  assert Config().knn_monitor_steps == 0
  with pytest.raises(ValueError, match='knn_monitor_steps'):
    Config(knn_monitor_steps=-1).validate()
  with pytest.raises(ValueError, match='knn_monitor_steps'):
    Config(knn_monitor_steps=10, dataset='image_folder_unlabeled',
           lineareval_while_pretraining=False).validate()
  assert Config(knn_monitor_steps=10, dataset='digits').validate().knn_monitor_steps == 10
