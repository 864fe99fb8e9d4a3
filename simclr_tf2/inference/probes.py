"""Scores of frozen features: weighted kNN and a linear probe.

    from simclr_tf2.inference.probes import knn_accuracy, linear_probe
    knn_accuracy(train_x, train_y, test_x, test_y)           # k=200, temperature=0.1
    linear_probe(train_x, train_y, test_x, test_y)['top_1_accuracy']

Both fit on the train split only and score the test split. The kNN classifier is the weighted
vote of the instance-discrimination literature (Wu et al. 2018, used to monitor SimCLR-era
training): cosine similarity s to the k nearest training features, each neighbour voting for its
class with weight exp(s / temperature).
"""

import json
import os
from typing import Dict, Optional, Sequence

import numpy as np

from simclr_tf2.summaries import write_scalars

KNN_K = 200
KNN_TEMPERATURE = 0.1
PROBE_C_GRID = (1e-3, 1e-2, 1e-1, 1.)  # inverse L2 strength, chosen on held-out data
PROBE_HOLDOUT_FRACTION = 0.2
KNN_SCALAR = 'knn/top_1_accuracy'
PROBE_SCALAR = 'linear_probe/top_1_accuracy'
SCORES_FILE = 'scores.json'
_CHUNK = 1024  # test rows per similarity block: bounds memory at CHUNK x num_train floats


def single_threaded_numerics():
  """Context limiting BLAS/OpenMP pools to one thread for scikit-learn fits. Next to
  TensorFlow's own thread pools their spinning worker threads oversubscribe the cores (10-50x
  slower probes and t-SNE on a busy 2-core machine), and one thread also makes t-SNE's result
  independent of the core count."""
  from threadpoolctl import threadpool_limits  # pylint: disable=import-outside-toplevel
  return threadpool_limits(limits=1)


def _check_pair(features, labels, name):
  features = np.asarray(features)
  labels = np.asarray(labels)
  if features.ndim != 2 or labels.shape != (len(features),):
    raise ValueError(f'{name}: expected features [N, D] and labels [N], got {features.shape} '
                     f'and {labels.shape}')
  if not len(features):
    raise ValueError(f'{name}: no examples')
  return features, labels.astype(np.int64)


def _unit_rows(features):
  features = np.asarray(features, np.float64)
  return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def knn_predict(train_features, train_labels, test_features, k: int = KNN_K,
                temperature: float = KNN_TEMPERATURE,
                num_classes: Optional[int] = None) -> np.ndarray:
  """Predicted class of each test row by the exp(cosine / temperature)-weighted vote of its k
  nearest training rows (k is capped at the training-set size). Ties go to the lower class."""
  train_features, train_labels = _check_pair(train_features, train_labels, 'kNN train split')
  if k < 1 or temperature <= 0:
    raise ValueError(f'kNN needs k >= 1 and temperature > 0, got k={k}, '
                     f'temperature={temperature}')
  num_classes = num_classes or int(train_labels.max()) + 1
  k = min(k, len(train_features))
  train, test = _unit_rows(train_features), _unit_rows(test_features)
  predictions = []
  for start in range(0, len(test), _CHUNK):
    similarity = test[start:start + _CHUNK] @ train.T
    neighbours = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    weights = np.exp(np.take_along_axis(similarity, neighbours, axis=1) / temperature)
    votes = np.zeros((len(similarity), num_classes))
    np.add.at(votes, (np.arange(len(similarity))[:, None], train_labels[neighbours]), weights)
    predictions.append(np.argmax(votes, axis=1))
  return np.concatenate(predictions) if predictions else np.zeros([0], np.int64)


def knn_accuracy(train_features, train_labels, test_features, test_labels, k: int = KNN_K,
                 temperature: float = KNN_TEMPERATURE) -> float:
  """Top-1 accuracy of `knn_predict` on the test split."""
  test_features, test_labels = _check_pair(test_features, test_labels, 'kNN test split')
  _, train_labels = _check_pair(train_features, train_labels, 'kNN train split')
  num_classes = int(max(train_labels.max(), test_labels.max())) + 1
  predictions = knn_predict(train_features, train_labels, test_features, k, temperature,
                            num_classes)
  return float(np.mean(predictions == test_labels))


def linear_probe(train_features, train_labels, test_features, test_labels,
                 c_grid: Sequence[float] = PROBE_C_GRID,
                 holdout_fraction: float = PROBE_HOLDOUT_FRACTION, seed: int = 0,
                 max_iter: int = 1000) -> Dict[str, float]:
  """L2-regularised logistic regression on standardised features, train split -> test split.

  The regularisation C is the one of `c_grid` with the best accuracy on a held-out part
  (`holdout_fraction`, stratified when every class allows it) of the train split; the probe is
  then refitted on the whole train split. Returns top_1_accuracy (test), C and holdout accuracy.
  """
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  from sklearn.model_selection import train_test_split  # pylint: disable=import-outside-toplevel
  from sklearn.pipeline import make_pipeline  # pylint: disable=import-outside-toplevel
  from sklearn.preprocessing import StandardScaler  # pylint: disable=import-outside-toplevel
  train_features, train_labels = _check_pair(train_features, train_labels, 'probe train split')
  test_features, test_labels = _check_pair(test_features, test_labels, 'probe test split')
  if len(np.unique(train_labels)) < 2:
    raise ValueError('linear probe: the train split has a single class')

  def probe(c):
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))

  counts = np.bincount(train_labels)
  stratify = train_labels if counts[counts > 0].min() >= 2 else None
  fit_x, held_x, fit_y, held_y = train_test_split(
      train_features, train_labels, test_size=holdout_fraction, random_state=seed,
      stratify=stratify)
  with single_threaded_numerics():
    held_scores = [probe(c).fit(fit_x, fit_y).score(held_x, held_y) for c in c_grid]
    best = int(np.argmax(held_scores))  # first best: the strongest regularisation among ties
    final = probe(c_grid[best]).fit(train_features, train_labels)
  return {'top_1_accuracy': float(final.score(test_features, test_labels)),
          'C': float(c_grid[best]), 'holdout_accuracy': float(held_scores[best])}


def write_scores(output_dir: str, scores: Dict[str, float], step: int = 0) -> str:
  """Writes `scores` ({scalar tag: value}) to output_dir/scores.json and as TensorBoard scalars."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.io.gfile.makedirs(output_dir)
  path = os.path.join(output_dir, SCORES_FILE)
  with tf.io.gfile.GFile(path, 'w') as f:
    json.dump(scores, f, indent=2, sort_keys=True)
  write_scalars(tf.summary.create_file_writer(output_dir), scores, step)
  return path
