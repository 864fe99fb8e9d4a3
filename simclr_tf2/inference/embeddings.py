"""Embeddings of a split through a trained encoder, and the files that show them.

  compute_embeddings(model, source, split)    float32 [N, D] of an endpoint, labels and ids
  write_metadata / write_projector            metadata.tsv, TensorBoard projector files, sprite
  write_plots                                 t-SNE / PCA / thumbnail-map PNGs (matplotlib)

TensorFlow is imported on first use. The `simclr-tf2-embed` command (simclr_tf2/embed.py) is
these pieces end to end.
"""

import math
import os
import weakref
from typing import List, NamedTuple, Optional

import numpy as np

from simclr_tf2.architecture import CIFAR_MAX_IMAGE_SIZE


DEFAULT_ENDPOINT = 'final_avg_pool'
EMBEDDINGS_FILE = 'embeddings.npy'
METADATA_FILE = 'metadata.tsv'
SPRITE_FILE = 'sprite.png'
PROJECTOR_CHECKPOINT = 'embedding.ckpt'
PROJECTOR_TENSOR_NAME = 'embedding/.ATTRIBUTES/VARIABLE_VALUE'  # the variable saved below
PROJECTOR_MAX_SPRITE = 8192  # the projector refuses sprite images beyond 8192 x 8192 pixels
MAX_THUMBNAIL = 64
PLOTS = ('tsne', 'pca', 'map')


class Embeddings(NamedTuple):
  embeddings: np.ndarray  # float32 [N, D]
  labels: Optional[np.ndarray]  # int64 [N], None for unlabeled data
  ids: List[str]  # source path, TFDS slice or digits index of each row


def _model_and_config(model_or_loaded):
  model = getattr(model_or_loaded, 'model', model_or_loaded)  # a LoadedModel or a model
  return model, model.simclr_config


def _count(source, split, max_examples):
  total = source.num_examples(split)
  return total if max_examples is None else min(total, max_examples)


def eval_images(source, split: str, image_size: int, max_examples: Optional[int] = None):
  """Unshuffled (image float32 [s, s, 3] in [0, 1], label) pairs with the eval preprocessing of
  training (centre crop above the CIFAR size, like data.pipeline.build_input_fn)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from simclr_tf2.data import augment  # pylint: disable=import-outside-toplevel
  dataset = source.as_dataset(split, shuffle_files=False)
  if max_examples is not None:
    dataset = dataset.take(max_examples)
  return dataset.map(
      lambda image, label: (augment.preprocess_image(image, image_size, image_size, False,
                                                     test_crop=image_size > CIFAR_MAX_IMAGE_SIZE), label),
      num_parallel_calls=tf.data.AUTOTUNE)


def compute_embeddings(model_or_loaded, dataset_source, split: str,
                       endpoint: str = DEFAULT_ENDPOINT, batch_size: int = 256,
                       max_examples: Optional[int] = None, strategy=None,
                       progress: bool = False) -> Embeddings:
  """The `endpoint` output of `model.call_with_endpoints` (inference mode) for the first
  `max_examples` images of a split, batched under `strategy` (default: the current one).

  4-D endpoints (block_group*, initial_*) are averaged over space, as final_avg_pool averages
  block_group4. Labels are None when the source is unlabeled.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  model, config = _model_and_config(model_or_loaded)
  strategy = strategy or tf.distribute.get_strategy()
  count = _count(dataset_source, split, max_examples)
  dataset = eval_images(dataset_source, split, config.image_size, max_examples).batch(batch_size)

  step = _embedding_step(model, endpoint, strategy)
  bar = None
  if progress:
    import tf_keras as keras  # pylint: disable=import-outside-toplevel
    bar = keras.utils.Progbar(math.ceil(count / batch_size), unit_name='batch')
  outputs, labels = [], []
  for index, (images, batch_labels) in enumerate(strategy.experimental_distribute_dataset(dataset)):
    replica_outputs, replica_labels = step(images, batch_labels)
    # Single-worker replicas receive consecutive slices of each batch, in replica order.
    outputs.extend(t.numpy() for t in strategy.experimental_local_results(replica_outputs))
    labels.extend(t.numpy() for t in strategy.experimental_local_results(replica_labels))
    if bar:
      bar.update(index + 1)
  embeddings = np.concatenate(outputs).astype(np.float32) if outputs else np.zeros([0, 0],
                                                                                     np.float32)
  labeled = getattr(dataset_source, 'labeled', True)
  return Embeddings(embeddings, np.concatenate(labels) if labeled and labels else None,
                    dataset_source.example_ids(split)[:count])


# One traced step per (model, endpoint, strategy): the KnnMonitor calls compute_embeddings often.
_STEPS = weakref.WeakKeyDictionary()


def _embedding_step(model, endpoint, strategy):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  steps = _STEPS.setdefault(model, {})
  key = (endpoint, id(strategy))
  if key in steps:
    return steps[key][1]

  model_ref = weakref.ref(model)  # the cache must not keep its key (the model) alive

  def embed(images, labels):
    outputs = model_ref().call_with_endpoints(images, training=False)
    if endpoint not in outputs:
      raise ValueError(f'unknown endpoint {endpoint!r}; this model has: '
                       f'{", ".join(outputs)}')
    output = outputs[endpoint]
    if output.shape.rank == 4:
      output = tf.reduce_mean(output, axis=[1, 2])
    return tf.cast(output, tf.float32), labels

  @tf.function(reduce_retracing=True)  # the last batch is smaller
  def step(images, labels):
    return strategy.run(embed, (images, labels))

  steps[key] = (strategy, step)  # holding the strategy keeps its id from being reused
  return step


def load_thumbnails(source, split: str, size: int, max_examples: Optional[int] = None
                    ) -> np.ndarray:
  """uint8 [N, size, size, 3]: each image centre-cropped to a square and resized."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  def thumbnail(image, label):
    del label
    shape = tf.shape(image)
    side = tf.minimum(shape[0], shape[1])
    image = tf.image.resize_with_crop_or_pad(image, side, side)
    image = tf.image.resize(image, [size, size], antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(image, 0., 255.)), tf.uint8)

  dataset = source.as_dataset(split, shuffle_files=False)
  if max_examples is not None:
    dataset = dataset.take(max_examples)
  batches = [b for b in dataset.map(thumbnail).batch(256).as_numpy_iterator()]
  return np.concatenate(batches) if batches else np.zeros([0, size, size, 3], np.uint8)


# --- writing ----------------------------------------------------------------------------------

def sprite_thumbnail_size(count: int, max_size: int = MAX_THUMBNAIL) -> int:
  """Largest thumbnail side <= max_size whose square sprite grid of `count` images fits in the
  projector's 8192 x 8192 limit (0 if even 1-pixel thumbnails do not fit)."""
  per_row = max(1, math.ceil(math.sqrt(count)))
  return min(max_size, PROJECTOR_MAX_SPRITE // per_row)


def sprite_image(thumbnails: np.ndarray) -> np.ndarray:
  """The projector's sprite: thumbnails row-major in a grid of ceil(sqrt(N)) columns, ceil(N /
  columns) rows, white where the grid is not full."""
  count, size = len(thumbnails), thumbnails.shape[1]
  columns = max(1, math.ceil(math.sqrt(count)))
  rows = max(1, math.ceil(count / columns))
  sprite = np.full([rows * size, columns * size, 3], 255, np.uint8)
  for index, image in enumerate(thumbnails):
    row, column = divmod(index, columns)
    sprite[row * size:(row + 1) * size, column * size:(column + 1) * size] = image
  return sprite


def _tsv_field(value):
  return ' '.join(str(value).split())  # tabs and newlines would break the TSV


def write_metadata(path: str, ids: List[str], labels: Optional[np.ndarray] = None,
                   class_names: Optional[List[str]] = None) -> str:
  """metadata.tsv with a header: index, label and class (when labeled), id."""
  header = ['index'] + (['label', 'class'] if labels is not None else []) + ['id']
  lines = ['\t'.join(header)]
  for index, example_id in enumerate(ids):
    row = [str(index)]
    if labels is not None:
      label = int(labels[index])
      name = class_names[label] if class_names and label < len(class_names) else str(label)
      row += [str(label), _tsv_field(name)]
    lines.append('\t'.join(row + [_tsv_field(example_id)]))
  with open(path, 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')
  return path


def write_projector(output_dir: str, embeddings: np.ndarray, metadata_file: str = METADATA_FILE,
                    thumbnails: Optional[np.ndarray] = None) -> str:
  """TensorBoard projector files in `output_dir`: the embeddings as a checkpointed variable,
  projector_config.pbtxt (TensorBoard's own proto) and, given thumbnails, sprite.png."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from tensorboard.plugins import projector  # pylint: disable=import-outside-toplevel
  tf.io.gfile.makedirs(output_dir)
  tf.train.Checkpoint(embedding=tf.Variable(embeddings, dtype=tf.float32)).save(
      os.path.join(output_dir, PROJECTOR_CHECKPOINT))
  config = projector.ProjectorConfig()
  embedding = config.embeddings.add()
  embedding.tensor_name = PROJECTOR_TENSOR_NAME
  embedding.metadata_path = metadata_file
  if thumbnails is not None and len(thumbnails):
    Image.fromarray(sprite_image(thumbnails)).save(os.path.join(output_dir, SPRITE_FILE))
    embedding.sprite.image_path = SPRITE_FILE
    embedding.sprite.single_image_dim.extend(thumbnails.shape[1:3])
  projector.visualize_embeddings(output_dir, config)
  return os.path.join(output_dir, 'projector_config.pbtxt')


def write_plots(output_dir: str, embeddings: np.ndarray, kinds, labels=None, class_names=None,
                thumbnails=None, seed: int = 0) -> List[str]:
  """PNG plots of `kinds` (tsne, pca, map = thumbnails at their t-SNE positions)."""
  from simclr_tf2.inference import plots  # pylint: disable=import-outside-toplevel
  plots.require_matplotlib()
  paths, points = [], {}

  def layout(method):
    if method not in points:
      points[method] = plots.project_2d(embeddings, method, seed)
    return points[method]

  for kind in kinds:
    if kind in ('tsne', 'pca'):
      path = os.path.join(output_dir, f'{kind}.png')
      plots.scatter_plot(layout(kind), path, labels, class_names,
                         title=f'{"t-SNE" if kind == "tsne" else "PCA"} of {len(embeddings)} '
                         'embeddings')
    else:
      path = os.path.join(output_dir, 'thumbnail_map.png')
      plots.thumbnail_map(layout('tsne'), thumbnails, path, labels)
    paths.append(path)
  return paths

