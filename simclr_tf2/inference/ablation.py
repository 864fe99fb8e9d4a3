"""Did pretraining help? kNN and linear-probe accuracy of raw pixels, of a random-init encoder
and of the pretrained encoder, side by side (the demo's ablation).

The random-init baseline is only fair with batch-norm statistics computed from the data: with
its initial moving statistics (mean 0, variance 1) a frozen random ResNet in inference mode
passes activations that grow block after block un-normalised, and its features are near chance.
"""

import logging
import os
from typing import Dict, List, NamedTuple, Optional

import numpy as np

from simclr_tf2.inference import probes
from simclr_tf2.inference.embeddings import (compute_embeddings, eval_images, load_thumbnails,
                                             write_plots)

RAW_PIXELS = 'raw pixels'
RANDOM_INIT = 'random-init encoder'
PRETRAINED = 'SimCLR-pretrained encoder'
KNN = 'knn_top_1'
PROBE = 'linear_probe_top_1'
PLOT_THUMBNAIL = 16


class Ablation(NamedTuple):
  scores: Dict[str, Dict[str, float]]  # {row: {knn_top_1, linear_probe_top_1}}
  plots: List[str]  # PNG paths (t-SNE scatter and thumbnail map of the pretrained test split)


def random_init_encoder(config, source, split: str, batch_size: int = 256, seed: int = 0,
                        strategy=None):
  """A randomly initialised model of `config`'s architecture whose batch-norm moving statistics
  are the data's ("precise BN", Wu & Johnson 2021): one pass over the un-augmented split in
  training mode, no gradients and no weight change; each batch norm's statistics become the
  exact mean and variance, over the whole split, of its input as the random layers below it
  compute it in training mode. With its initial statistics (mean 0, variance 1) a frozen random
  ResNet passes activations that grow block after block un-normalised. Evaluating with
  per-batch statistics would also be fair but makes an example's features depend on its batch;
  the data's statistics keep inference deterministic, exactly as for the pretrained encoder.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tf_keras as keras  # pylint: disable=import-outside-toplevel
  from simclr_tf2.network.model import build_model  # pylint: disable=import-outside-toplevel
  strategy = strategy or tf.distribute.get_strategy()
  config = config.replace(train_mode='pretrain', lineareval_while_pretraining=False,
                          fine_tune_after_block=-1)
  keras.utils.set_random_seed(seed)
  with strategy.scope():
    model = build_model(None, config).create_variables()
  norms = [layer for layer in model.submodules
           if isinstance(layer, keras.layers.BatchNormalization)]
  decays = [norm.momentum for norm in norms]
  for norm in norms:  # traced below with momentum 0: a call leaves its batch's statistics
    norm.momentum = 0.

  @tf.function
  def batch_statistics(images):
    # training=True normalises with the batch's statistics; blur=False keeps the images as is.
    strategy.run(lambda x: model(x, training=True, blur=False), (images,))

  # Per layer: sums over batches of count * mean and count * (variance + mean^2).
  count, sums = 0, [[0., 0.] for _ in norms]
  dataset = eval_images(source, split, config.image_size).batch(batch_size)
  for images, _ in strategy.experimental_distribute_dataset(dataset):
    batch_statistics(images)
    size = sum(int(tf.shape(part)[0]) for part in strategy.experimental_local_results(images))
    count += size
    for norm, total in zip(norms, sums):
      mean, variance = norm.moving_mean.numpy(), norm.moving_variance.numpy()
      total[0] += size * mean
      total[1] += size * (variance + mean ** 2)
  with strategy.scope():
    for norm, decay, (mean_sum, square_sum) in zip(norms, decays, sums):
      mean = mean_sum / count
      norm.moving_mean.assign(mean)
      norm.moving_variance.assign(square_sum / count - mean ** 2)
      norm.momentum = decay
  return model


def representation_scores(pretrained, source, *, train_split: str = 'train',
                          test_split: str = 'test', output_dir: Optional[str] = None,
                          batch_size: int = 256, k: int = probes.KNN_K,
                          temperature: float = probes.KNN_TEMPERATURE, seed: int = 0,
                          strategy=None) -> Ablation:
  """kNN and linear-probe top-1 (train split -> test split) for raw pixels (the eval-preprocessed
  image, flattened), a random-init encoder of the same architecture with recalibrated batch norm
  (`random_init_encoder`) and `pretrained` (a model or LoadedModel), all on the encoder output.
  With `output_dir`, also writes scores.json there and the t-SNE scatter and thumbnail map of
  the pretrained encoder's test-split embeddings.
  """
  config = getattr(pretrained, 'model', pretrained).simclr_config
  random_model = random_init_encoder(config, source, train_split, batch_size, seed, strategy)

  def pixels(split):
    images, labels = zip(*eval_images(source, split, config.image_size).batch(batch_size)
                         .as_numpy_iterator())
    return np.concatenate(images).reshape(-1, config.image_size ** 2 * 3), np.concatenate(labels)

  def encoder(model, split):
    return compute_embeddings(model, source, split, batch_size=batch_size, strategy=strategy)[:2]

  features = {RAW_PIXELS: pixels, RANDOM_INIT: lambda s: encoder(random_model, s),
              PRETRAINED: lambda s: encoder(pretrained, s)}
  scores, plots = {}, []
  for row, extract in features.items():
    (train_x, train_y), (test_x, test_y) = extract(train_split), extract(test_split)
    scores[row] = {
        KNN: probes.knn_accuracy(train_x, train_y, test_x, test_y, k, temperature),
        PROBE: probes.linear_probe(train_x, train_y, test_x, test_y, seed=seed)['top_1_accuracy']}
    if row == PRETRAINED and output_dir and _can_plot():
      os.makedirs(output_dir, exist_ok=True)
      thumbnails = load_thumbnails(source, test_split, PLOT_THUMBNAIL)
      plots = write_plots(output_dir, test_x, ('tsne', 'map'), test_y,
                          getattr(source, 'class_names', None), thumbnails, seed)
  if output_dir:
    probes.write_scores(output_dir, {f'{_slug(row)}/{name}': value
                                     for row, values in scores.items()
                                     for name, value in values.items()})
  return Ablation(scores, plots)


def _slug(row):
  return row.replace('-', '_').replace(' ', '_')


def _can_plot():
  from simclr_tf2.inference import plots as plots_lib  # pylint: disable=import-outside-toplevel
  try:
    plots_lib.require_matplotlib()
  except ImportError as error:
    logging.warning('No plots of the embeddings: %s', error)
    return False
  return True


def format_table(scores: Dict[str, Dict[str, float]]) -> str:
  """The scores as an aligned text table, one row per feature extractor."""
  lines = [f'  {"features":28s} {"kNN top-1":>10s} {"linear probe":>13s}']
  lines += [f'  {row:28s} {values[KNN]:10.3f} {values[PROBE]:13.3f}'
            for row, values in scores.items()]
  return '\n'.join(lines)
