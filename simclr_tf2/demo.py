"""Offline demo: SimCLR pretraining on the embedded digits dataset, then linear evaluation of the
pretrained encoder and of the same encoder at random initialisation.

    python -m simclr_tf2.demo [--model_dir=/tmp/simclr_tf2_digits_demo] [--pretrain_epochs=N]

Recipes: flags/digits_demo.cfg (pretraining) and flags/digits_demo_linear_eval.cfg (evaluation).
"""

import logging as std_logging
import os
import sys

from absl import app, flags, logging

from simclr_tf2 import flags as config_flags

FLAGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'flags')
DEFAULT_MODEL_DIR = '/tmp/simclr_tf2_digits_demo'


def recipe(*flagfiles, **overrides):
  """A Config from flagfiles (later files win) and keyword overrides."""
  values = flags.FlagValues()
  config_flags.define_config_flags(values)
  values(['demo'] + [f'--flagfile={os.path.join(FLAGS_DIR, name)}' for name in flagfiles])
  return config_flags.config_from_flags(values).replace(**overrides)


def _epochs(value):
  return {} if value is None else {'train_epochs': value}


def run_demo(model_dir=DEFAULT_MODEL_DIR, pretrain_epochs=None, linear_eval_epochs=None):
  """Pretrains, linear-evaluates pretrained and random-init encoders; returns {label: result}."""
  from simclr_tf2 import train  # pylint: disable=import-outside-toplevel
  pretrain = recipe('digits_demo.cfg', model_dir=os.path.join(model_dir, 'pretrain'),
                    **_epochs(pretrain_epochs))
  linear_eval = recipe('digits_demo.cfg', 'digits_demo_linear_eval.cfg',
                       **_epochs(linear_eval_epochs))
  strategy = train.build_strategy(pretrain)
  train.run(pretrain, strategy)
  results = {}
  for label, checkpoint in (('SimCLR-pretrained encoder', pretrain.model_dir),
                            ('random-init encoder', None)):
    run_dir = os.path.join(model_dir, 'linear_eval_' + ('pretrained' if checkpoint else
                                                        'random_init'))
    results[label] = train.run(linear_eval.replace(checkpoint=checkpoint, model_dir=run_dir),
                               strategy).metrics
  train.write_json(os.path.join(model_dir, 'demo_results.json'), results)
  print(f'\nLinear evaluation on the digits test split ({pretrain.resnet_depth}-layer ResNet, '
        f'{pretrain.image_size} px, {pretrain.train_epochs} pretraining epochs):')
  print(f'  {"encoder":28s} {"top-1":>7s} {"top-5":>7s}')
  for label, result in results.items():
    print(f'  {label:28s} {result["eval/label_top_1_accuracy"]:7.3f} '
          f'{result["eval/label_top_5_accuracy"]:7.3f}')
  print(f'Results: {os.path.join(model_dir, "demo_results.json")}')
  return results


def _parse_command_line(argv):
  """The demo's own flags (no global FLAGS: only this entry point reads them)."""
  values = flags.FlagValues()
  flags.DEFINE_string('model_dir', DEFAULT_MODEL_DIR, 'Where the three runs are written.',
                      flag_values=values)
  flags.DEFINE_integer('pretrain_epochs', None, 'Override the pretraining epochs of the recipe.',
                       flag_values=values)
  flags.DEFINE_integer('linear_eval_epochs', None, 'Override the linear-eval epochs.',
                       flag_values=values)
  try:
    values(argv)
  except flags.Error as error:
    sys.exit(f'error: {error}')
  flags.FLAGS(argv[:1])  # absl's own flags keep their defaults; app.run needs them parsed
  return values


def main(values):
  std_logging.getLogger('tensorflow').setLevel(std_logging.WARNING)
  run_demo(values.model_dir, values.pretrain_epochs, values.linear_eval_epochs)
  return 0


if __name__ == '__main__':
  os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')  # see README "Python API"
  logging.set_verbosity(logging.INFO)
  app.run(main, flags_parser=_parse_command_line)
