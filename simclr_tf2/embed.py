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

import os
import sys
import time

import numpy as np

from simclr_tf2 import command, console
from simclr_tf2.inference import probes
from simclr_tf2.inference.embeddings import (DEFAULT_ENDPOINT, EMBEDDINGS_FILE, METADATA_FILE,
                                             PLOTS, Embeddings, compute_embeddings, eval_images,
                                             load_thumbnails, sprite_thumbnail_size, write_metadata,
                                             write_plots, write_projector)

__all__ = ['Embeddings', 'compute_embeddings', 'eval_images', 'load_thumbnails', 'write_metadata',
           'write_plots', 'write_projector', 'run', 'run_main']


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
    from simclr_tf2.inference import plots  # pylint: disable=import-outside-toplevel
    try:
      plots.require_matplotlib()  # before the (slow) embedding, not after it
    except ImportError as error:
      if values['plots'].present:  # asked for: an error; the default: skipped, said once
        raise
      print(f'Plots skipped: {error}.', file=sys.stderr)
      values.plots = []


def embed_main(values) -> dict:
  """Runs the tool for parsed flags; returns {output name: path or value}."""
  start = time.monotonic()
  _validate(values)
  from simclr_tf2.config import Config  # pylint: disable=import-outside-toplevel
  from simclr_tf2.data import get_source  # pylint: disable=import-outside-toplevel
  from simclr_tf2.flags import explicitly_set  # pylint: disable=import-outside-toplevel
  from simclr_tf2.inference.loading import DETECTED_FLAGS, load_model  # pylint: disable=import-outside-toplevel
  # pylint: disable-next=import-outside-toplevel
  from simclr_tf2.distribute import build_strategy, check_one_process, describe
  device_config = Config(**{name: values[name].value for name in (
      'use_tpu', 'tpu_name', 'tpu_zone', 'gcp_project', 'master')})
  check_one_process(device_config, 'simclr-tf2-embed')
  strategy = build_strategy(device_config)  # before anything touches the devices
  overrides = {name: values[name].value for name in explicitly_set(values)
               if name in DETECTED_FLAGS}
  loaded = load_model(values.source, strategy=strategy, **overrides)
  source = get_source(values.dataset, values.data_dir, values.skip_corrupt_images,
                      loaded.config.image_size)
  if values.probe and not getattr(source, 'labeled', True):
    raise ValueError('--probe needs labels; image_folder_unlabeled has none')
  console.print_header(f'simclr-tf2-embed: {values.dataset}/{values.split} through '
                       f'{loaded.path} (step {loaded.global_step}), {values.endpoint}',
                       describe(strategy), values.output_dir)
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
  return command.run(define_flags, embed_main, argv)


def run_main():
  """Console script `simclr-tf2-embed` and `python -m simclr_tf2.embed`: quiet console unless
  -v 1 (TensorFlow is imported only after that); the complete log goes to output_dir/log.txt."""
  command.main(define_flags, embed_main, log_file=lambda values: values.output_dir and
               os.path.join(values.output_dir, console.LOG_FILE_NAME))


if __name__ == '__main__':
  run_main()
