"""Offline demo: SimCLR pretraining on the embedded digits dataset, linear evaluation of the
pretrained encoder, then what the encoder learned: kNN and linear-probe accuracy of raw pixels, a
random-init encoder and the pretrained encoder, a t-SNE scatter and a thumbnail map.

    python -m simclr_tf2.demo [--model_dir=/tmp/simclr_tf2_digits_demo] [--pretrain_epochs=N]

Recipes: digits_demo (pretraining) and digits_demo_linear_eval (evaluation), in flags/.
"""

import os
import time

from absl import flags

from simclr_tf2 import command, console, recipes
from simclr_tf2 import flags as config_flags
from simclr_tf2.config import PRECISIONS
from simclr_tf2.errors import ConfigError

DEFAULT_MODEL_DIR = '/tmp/simclr_tf2_digits_demo'


def recipe(*flagfiles, **overrides):
  """A Config from flagfiles (recipe names or paths; later files win) and keyword overrides."""
  values = flags.FlagValues()
  config_flags.define_config_flags(values)
  values(['demo'] + recipes.expand_flagfiles([f'--flagfile={name}' for name in flagfiles]))
  return config_flags.config_from_flags(values).replace(**overrides)


def _epochs(value):
  return {} if value is None else {'train_epochs': value}


def run_demo(model_dir=DEFAULT_MODEL_DIR, pretrain_epochs=None, linear_eval_epochs=None,
             precision='float32', strategy=None):
  """Pretrains, linear-evaluates the pretrained encoder and scores frozen features (raw pixels,
  random-init and pretrained encoders); prints the tables; returns the results. `strategy`:
  default build_strategy of the recipe."""
  from simclr_tf2.distribute import build_strategy  # pylint: disable=import-outside-toplevel
  from simclr_tf2.model_dir import write_json  # pylint: disable=import-outside-toplevel
  from simclr_tf2.training.runner import run  # pylint: disable=import-outside-toplevel
  from simclr_tf2.training.trainer import default_callbacks  # pylint: disable=import-outside-toplevel
  from simclr_tf2.training.callbacks import ProgressBar  # pylint: disable=import-outside-toplevel
  from simclr_tf2.training.run_settings import describe_changes, settings_changes  # pylint: disable=import-outside-toplevel
  pretrain = recipe('digits_demo.cfg', model_dir=os.path.join(model_dir, 'pretrain'),
                    precision=precision, **_epochs(pretrain_epochs))
  linear_eval = recipe('digits_demo.cfg', 'digits_demo_linear_eval.cfg',
                       checkpoint=pretrain.model_dir,
                       model_dir=os.path.join(model_dir, 'linear_eval_pretrained'),
                       precision=precision, **_epochs(linear_eval_epochs))
  for config in (pretrain, linear_eval):  # results of other settings are never reported
    changes = settings_changes(config, config.model_dir)
    if changes:
      raise ConfigError(
          f'{config.model_dir} was made by a demo with other settings '
          f'({describe_changes(changes)}); use another --model_dir, or delete {model_dir} to '
          'start again')
  strategy = strategy or build_strategy(pretrain)
  progress_bar = console.is_quiet()
  for config, title in ((pretrain, 'pretrain'), (linear_eval, 'linear eval')):
    callbacks = default_callbacks(config)
    if progress_bar:
      callbacks.append(ProgressBar(config.train_batch_size, title))
    result = run(config, strategy, callbacks, eval_progress_bar=progress_bar)
  results = {'linear_eval': result.metrics}
  print(f'\nLinear evaluation of the pretrained encoder on the digits {linear_eval.eval_split} '
        f'split ({pretrain.resnet_depth}-layer ResNet, {pretrain.image_size} px, '
        f'{pretrain.train_epochs} pretraining epochs): top-1 '
        f'{result.metrics["eval/label_top_1_accuracy"]:.3f}, top-5 '
        f'{result.metrics["eval/label_top_5_accuracy"]:.3f}')
  results['representation_scores'] = _representation_scores(pretrain, model_dir, strategy)
  write_json(os.path.join(model_dir, 'demo_results.json'), results)
  return results


def _representation_scores(pretrain, model_dir, strategy):
  """Raw pixels vs random-init encoder (batch norm recalibrated on the data) vs pretrained
  encoder; prints the table and where the t-SNE scatter and thumbnail map are."""
  from simclr_tf2.inference import ablation  # pylint: disable=import-outside-toplevel
  from simclr_tf2.data import get_source  # pylint: disable=import-outside-toplevel
  from simclr_tf2.inference.loading import load_model  # pylint: disable=import-outside-toplevel
  print('\nScoring frozen features (raw pixels, random-init and pretrained encoders) ...',
        flush=True)
  output_dir = os.path.join(model_dir, 'embeddings')
  result = ablation.representation_scores(
      load_model(pretrain.model_dir, strategy=strategy),
      get_source(pretrain.dataset, pretrain.data_dir, image_size=pretrain.image_size),
      train_split=pretrain.train_split, test_split=pretrain.eval_split, output_dir=output_dir,
      seed=pretrain.seed or 0, strategy=strategy)
  print(f'\nFrozen features, {pretrain.train_split} -> {pretrain.eval_split} split (kNN k=200, '
        'temperature 0.1; L2 logistic regression):')
  print(ablation.format_table(result.scores))
  for path in result.plots:
    print(f'Plot: {path}')
  return result.scores


def define_flags(values):
  """The demo's own flags."""
  flags.DEFINE_string('model_dir', DEFAULT_MODEL_DIR, 'Where the three runs are written.',
                      flag_values=values)
  flags.DEFINE_integer('pretrain_epochs', None, 'Override the pretraining epochs of the recipe.',
                       flag_values=values)
  flags.DEFINE_integer('linear_eval_epochs', None, 'Override the linear-eval epochs.',
                       flag_values=values)
  flags.DEFINE_enum('precision', 'float32', list(PRECISIONS),
                    'Compute precision of both runs (see --precision of simclr-tf2).',
                    flag_values=values)


def main(values) -> int:
  """The demo for parsed flags; prints the header, the tables and the summary."""
  # pylint: disable=import-outside-toplevel  (TensorFlow loads after the console is quiet)
  from simclr_tf2.distribute import build_strategy, check_one_process, describe
  from simclr_tf2.inference.ablation import KNN, PRETRAINED, PROBE
  start = time.monotonic()
  check_one_process(recipe('digits_demo.cfg'), 'the demo')
  strategy = build_strategy(recipe('digits_demo.cfg'))  # before anything touches the devices
  console.print_header('simclr_tf2 demo: SimCLR on digits, then what the encoder learned',
                       describe(strategy), values.model_dir)
  results = run_demo(values.model_dir, values.pretrain_epochs, values.linear_eval_epochs,
                     values.precision, strategy)
  pretrained = results['representation_scores'][PRETRAINED]
  console.print_summary(
      {'linear-eval top-1': results['linear_eval']['eval/label_top_1_accuracy'],
       'pretrained kNN top-1': pretrained[KNN], 'pretrained probe top-1': pretrained[PROBE]},
      {'results': os.path.join(values.model_dir, 'demo_results.json'),
       'plots': os.path.join(values.model_dir, 'embeddings'),
       'log': os.path.join(values.model_dir, console.LOG_FILE_NAME)},
      seconds=time.monotonic() - start)
  return 0


def run_main():
  """`python -m simclr_tf2.demo`: quiet console unless -v 1; the log goes to model_dir/log.txt."""
  os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')  # Keras 2 (docs/api.md)
  command.main(define_flags, main,
               log_file=lambda values: os.path.join(values.model_dir, console.LOG_FILE_NAME))


if __name__ == '__main__':
  run_main()
