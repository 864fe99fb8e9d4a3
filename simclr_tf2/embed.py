"""Embed a dataset with a trained encoder: arrays, metadata, TensorBoard projector, plots, scores.

    python -m simclr_tf2.embed --source=/tmp/run --dataset=digits --split=test \
        --output_dir=/tmp/embeddings --plots=tsne,map --probe
    tensorboard --logdir /tmp/embeddings        # PROJECTOR tab: points with their images

`--source` is a run's model_dir, a checkpoint (architecture flags optional: detected from the
shapes) or an exported SavedModel. Writes to `--output_dir`: embeddings.npy (float32 N x D),
metadata.tsv, projector files (projector_config.pbtxt, embedding checkpoint, sprite.png), the
requested PNG plots and, with --probe, scores.json (kNN and linear probe, --probe_train_split ->
--split) plus the same scores as TensorBoard scalars.
"""

import math
import os
import sys
import time
import weakref
from typing import List, NamedTuple, Optional

import numpy as np

from simclr_tf2 import console, probes, recipes
from simclr_tf2.errors import SimCLRError, one_line

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
  training (centre crop above 32 px, like data.build_input_fn)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from simclr_tf2 import augment  # pylint: disable=import-outside-toplevel
  dataset = source.as_dataset(split, shuffle_files=False)
  if max_examples is not None:
    dataset = dataset.take(max_examples)
  return dataset.map(
      lambda image, label: (augment.preprocess_image(image, image_size, image_size, False,
                                                     test_crop=image_size > 32), label),
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
  from simclr_tf2 import plots  # pylint: disable=import-outside-toplevel
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


# --- entry point ------------------------------------------------------------------------------

def define_flags(flag_values):
  """The tool's flags on `flag_values`: source, architecture (Config) flags, data, outputs."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from simclr_tf2 import flags as config_flags  # pylint: disable=import-outside-toplevel
  from simclr_tf2.architecture import DETECTED_FLAGS  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string('source', None, 'A run\'s model_dir, a checkpoint prefix or directory, or '
                      'an exported SavedModel directory.', flag_values=flag_values)
  # Architecture flags only matter for checkpoints without config.json; unset ones are detected.
  config_flags.define_config_flags(flag_values, names=set(DETECTED_FLAGS) | {
      'dataset', 'data_dir', 'skip_corrupt_images', 'use_tpu', 'tpu_name', 'tpu_zone',
      'gcp_project', 'master'})
  flag_values.set_default('dataset', 'digits')
  flag_values.set_default('use_tpu', False)
  flags.DEFINE_string('split', 'test', 'Split to embed (the probes\' test split).',
                      flag_values=flag_values)
  flags.DEFINE_integer('max_examples', None, 'Embed at most this many examples of the split.',
                       flag_values=flag_values)
  flags.DEFINE_string('endpoint', DEFAULT_ENDPOINT, 'Model output to embed: final_avg_pool '
                      '(encoder), proj_head_output (projection head) or any SavedModel endpoint; '
                      '4-D ones are averaged over space.', flag_values=flag_values)
  flags.DEFINE_string('output_dir', None, 'Folder for embeddings, metadata, projector, plots.',
                      flag_values=flag_values)
  flags.DEFINE_integer('batch_size', 256, 'Global batch size.', flag_values=flag_values)
  flags.DEFINE_list('plots', ['tsne', 'map'], f'PNG plots: any of {", ".join(PLOTS)} (empty '
                    'for none).', flag_values=flag_values)
  flags.DEFINE_bool('probe', False, 'Also score the embeddings: kNN and linear probe fitted on '
                    '--probe_train_split, tested on --split (labeled data only).',
                    flag_values=flag_values)
  flags.DEFINE_string('probe_train_split', 'train', 'Training split of the probes.',
                      flag_values=flag_values)
  flags.DEFINE_integer('knn_k', probes.KNN_K, 'Neighbours of the kNN probe.',
                       flag_values=flag_values)
  flags.DEFINE_float('knn_temperature', probes.KNN_TEMPERATURE, 'Temperature of the kNN '
                     'weights exp(similarity / temperature).', flag_values=flag_values)
  flags.DEFINE_bool('projector', True, 'Write the TensorBoard projector files.',
                    flag_values=flag_values)


def _validate(values):
  if not values.source:
    raise ValueError('--source is required (a model_dir, checkpoint or SavedModel)')
  if not values.output_dir:
    raise ValueError('--output_dir is required')
  unknown = sorted(set(values.plots) - set(PLOTS))
  if unknown:
    raise ValueError(f'--plots: unknown {", ".join(unknown)}; choose from {", ".join(PLOTS)}')
  if values.batch_size < 1 or (values.max_examples is not None and values.max_examples < 1):
    raise ValueError('--batch_size and --max_examples must be >= 1')
  if values.knn_k < 1 or values.knn_temperature <= 0:
    raise ValueError('--knn_k must be >= 1 and --knn_temperature > 0')
  if values.plots:
    from simclr_tf2 import plots  # pylint: disable=import-outside-toplevel
    plots.require_matplotlib()  # before the (slow) embedding, not after it


def embed_main(values) -> dict:
  """Runs the tool for parsed flags; returns {output name: path or value}."""
  start = time.monotonic()
  _validate(values)
  from simclr_tf2.config import Config  # pylint: disable=import-outside-toplevel
  from simclr_tf2.data import get_source  # pylint: disable=import-outside-toplevel
  from simclr_tf2.flags import explicitly_set  # pylint: disable=import-outside-toplevel
  from simclr_tf2.loading import DETECTED_FLAGS, load_model  # pylint: disable=import-outside-toplevel
  from simclr_tf2.train import build_strategy  # pylint: disable=import-outside-toplevel
  strategy = build_strategy(Config(**{name: values[name].value for name in (
      'use_tpu', 'tpu_name', 'tpu_zone', 'gcp_project', 'master')}))
  overrides = {name: values[name].value for name in explicitly_set(values)
               if name in DETECTED_FLAGS}
  loaded = load_model(values.source, strategy=strategy, **overrides)
  source = get_source(values.dataset, values.data_dir, values.skip_corrupt_images,
                      loaded.config.image_size)
  if values.probe and not getattr(source, 'labeled', True):
    raise ValueError('--probe needs labels; image_folder_unlabeled has none')
  console.print_header(f'simclr-tf2-embed: {values.dataset}/{values.split} through '
                       f'{loaded.path} (step {loaded.global_step}), {values.endpoint}',
                       console.device_names(), values.output_dir)
  result = compute_embeddings(loaded, source, values.split, values.endpoint, values.batch_size,
                              values.max_examples, strategy, progress=True)
  out = values.output_dir
  os.makedirs(out, exist_ok=True)
  class_names = getattr(source, 'class_names', None)
  written = {'embeddings': os.path.join(out, EMBEDDINGS_FILE)}
  np.save(written['embeddings'], result.embeddings)
  written['metadata'] = write_metadata(os.path.join(out, METADATA_FILE), result.ids,
                                       result.labels, class_names)
  thumbnails = None
  if values.projector or 'map' in values.plots:
    size = sprite_thumbnail_size(len(result.ids))
    thumbnails = load_thumbnails(source, values.split, size, values.max_examples) if size else None
  if values.projector:
    written['projector'] = write_projector(out, result.embeddings, METADATA_FILE, thumbnails)
  if values.plots:
    written['plots'] = write_plots(out, result.embeddings, values.plots, result.labels,
                                   class_names, thumbnails)
  if values.probe:
    train = compute_embeddings(loaded, source, values.probe_train_split, values.endpoint,
                               values.batch_size, None, strategy, progress=True)
    scores = {
        probes.KNN_SCALAR: probes.knn_accuracy(train.embeddings, train.labels, result.embeddings,
                                               result.labels, values.knn_k,
                                               values.knn_temperature),
        probes.PROBE_SCALAR: probes.linear_probe(train.embeddings, train.labels,
                                                 result.embeddings, result.labels
                                                 )['top_1_accuracy']}
    written['scores'] = probes.write_scores(out, scores, step=loaded.global_step or 0)
    written.update(scores)
  console.print_summary(
      {'embeddings': len(result.ids), 'dimension': result.embeddings.shape[1],
       **{name: value for name, value in written.items() if not isinstance(value, (str, list))}},
      {name: value if isinstance(value, str) else ', '.join(value)
       for name, value in written.items() if isinstance(value, (str, list))},
      seconds=time.monotonic() - start)
  if values.projector:
    print(f'Projector: tensorboard --logdir {out}')
  return written


def run(argv) -> int:
  """In-process entry point: parses `argv` (argv[0] = program name), returns the exit code.
  The process' console is left as the caller set it up."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  values = flags.FlagValues()
  define_flags(values)
  try:
    values(argv)
  except flags.Error as error:
    print(f'error: {one_line(error)}', file=sys.stderr)
    return 1
  return _report_errors(values)


def _report_errors(values) -> int:
  """Runs the tool; a user error is one `error: ...` line and exit code 1."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  try:
    embed_main(values)
  except (SimCLRError, ValueError, ImportError, OSError, tf.errors.OpError) as error:
    print(f'error: {one_line(error)}', file=sys.stderr)
    return 1
  return 0


def run_main():
  """Console script `simclr-tf2-embed` and `python -m simclr_tf2.embed`: quiet console unless
  -v 1 (TensorFlow is imported only after that)."""
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  values = flags.FlagValues()  # the tool's own flags: nothing below reads absl's global FLAGS
  define_flags(values)
  flags.DEFINE_integer('verbosity', 0, '>= 1: full logs on the console.', short_name='v',
                       flag_values=values)

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    console.quiet_tensorflow(values.verbosity)
    if values.output_dir:
      console.setup_log_file(os.path.join(values.output_dir, console.LOG_FILE_NAME))
    sys.exit(_report_errors(values))

  app.run(main, flags_parser=recipes.own_flags_parser(values))

if __name__ == '__main__':
  run_main()
