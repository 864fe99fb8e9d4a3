"""Offline demo: SimCLR pretraining on the embedded digits dataset, linear evaluation of the
pretrained encoder, then what the encoder learned: kNN and linear-probe accuracy of raw pixels, a
random-init encoder and the pretrained encoder, a t-SNE scatter and a thumbnail map.

    python -m simclr_tf2.demo [--model_dir=/tmp/simclr_tf2_digits_demo] [--pretrain_epochs=N]

`--semi_supervised` runs SimCLRv2's three stages instead (docs/semi_supervised.md), with 10 %
of the labels: (a) supervised from scratch on the 10 %, (b) pretraining on every image then
fine-tuning on the 10 %, (c) (b) distilled into a fresh student on every image without labels;
a table of test accuracy, parameters and images/s, and a bar plot.

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


SEMI_LABEL_FRACTION = 0.1
SEMI_FINETUNE = dict(mode='train_then_eval', train_mode='finetune',
                     label_fraction=SEMI_LABEL_FRACTION, fine_tune_after_block=-1,
                     optimizer='momentum', learning_rate=0.4,
                     weight_decay=1e-4, warmup_epochs=0., train_batch_size=64,
                     eval_batch_size=360, use_blur=False)
SEMI_DISTILL = dict(mode='train_then_eval', train_mode='distill', optimizer='momentum',
                    learning_rate=0.4, weight_decay=1e-4, warmup_epochs=0.,
                    train_batch_size=128, eval_batch_size=360, distill_temperature=1.,
                    distill_label_weight=0., use_blur=False)


def run_semi_supervised_demo(model_dir=DEFAULT_MODEL_DIR, pretrain_epochs=None,
                             finetune_steps=120, distill_epochs=10, precision='float32',
                             strategy=None):
  """The three SimCLRv2 stages on digits with 10 % of the labels (see the module docstring);
  prints the table, draws the plot; returns {row: {metric: value}}."""
  # pylint: disable=import-outside-toplevel
  from simclr_tf2.distribute import build_strategy
  from simclr_tf2.model_dir import write_json
  from simclr_tf2.training.runner import run
  from simclr_tf2.training.trainer import default_callbacks
  from simclr_tf2.training.callbacks import ProgressBar
  pretrain = recipe('digits_demo.cfg', model_dir=os.path.join(model_dir, 'pretrain'),
                    precision=precision, **_epochs(pretrain_epochs))
  scratch = pretrain.replace(**SEMI_FINETUNE, train_steps=finetune_steps,
                             model_dir=os.path.join(model_dir, 'a_supervised_10pct'))
  finetuned = scratch.replace(checkpoint=pretrain.model_dir, zero_init_logits_layer=True,
                              model_dir=os.path.join(model_dir, 'b_pretrain_finetune_10pct'))
  distilled = pretrain.replace(**SEMI_DISTILL, train_epochs=distill_epochs,
                               teacher_checkpoint=finetuned.model_dir,
                               model_dir=os.path.join(model_dir, 'c_distilled'))
  strategy = strategy or build_strategy(pretrain)
  progress_bar = console.is_quiet()
  rows = {}
  # The pretrained encoder is read from its checkpoint; it is not exported (no table row).
  titles = (('(a) supervised, 10% labels', scratch),
            ('pretrain (all images)', pretrain.replace(export_saved_model=False)),
            ('(b) pretrain + fine-tune 10%', finetuned),
            ('(c) (b) distilled, no labels', distilled))
  for title, config in titles:
    callbacks = default_callbacks(config)
    if progress_bar:
      callbacks.append(ProgressBar(config.train_batch_size, title))
    start = time.monotonic()
    result = run(config, strategy, callbacks, eval_progress_bar=progress_bar)
    if result.metrics is not None:
      rows[title] = dict(_model_facts(result.saved_model, config),
                         top_1=result.metrics['eval/label_top_1_accuracy'],
                         train_seconds=time.monotonic() - start)
  print('\nSemi-supervised digits, 10% of the training labels '
        f'({pretrain.resnet_depth}-layer ResNet, {pretrain.image_size} px; test split, '
        f'{DIGITS_TEST_IMAGES} images):')
  print(format_semi_table(rows))
  plot = os.path.join(model_dir, 'semi_supervised.png')
  if _bar_plot(rows, plot):
    print(f'Plot: {plot}')
  write_json(os.path.join(model_dir, 'semi_supervised_results.json'), rows)
  return rows


DIGITS_TEST_IMAGES = 360


def _model_facts(saved_model, config):
  """Parameters (all weights of the exported model) and inference images/s on the test split."""
  # pylint: disable=import-outside-toplevel
  import numpy as np
  import tensorflow as tf
  from simclr_tf2.data import get_source
  from simclr_tf2.inference.loading import load_model
  from simclr_tf2.network.export import read_saved_model_variables
  loaded = load_model(saved_model)
  variables = read_saved_model_variables(saved_model)
  parameters = int(sum(np.prod(v.shape) for v in variables.values()))
  source = get_source(config.dataset, image_size=config.image_size)
  images = next(iter(source.as_dataset(config.eval_split, shuffle_files=False).batch(
      DIGITS_TEST_IMAGES).map(lambda image, label: tf.image.convert_image_dtype(
          image, tf.float32)).map(lambda image: tf.image.resize(
              image, [config.image_size, config.image_size]))))
  loaded.model.call_with_endpoints(images)  # warm-up
  start, repeats = time.monotonic(), 3
  for _ in range(repeats):
    loaded.model.call_with_endpoints(images)['logits_sup'].numpy()
  return dict(parameters=parameters,
              images_per_second=repeats * DIGITS_TEST_IMAGES / (time.monotonic() - start))


def format_semi_table(rows) -> str:
  lines = [f'{"run":<32} {"test top-1":>10} {"parameters":>11} {"images/s":>9}']
  for title, row in rows.items():
    lines.append(f'{title:<32} {row["top_1"]:>10.3f} {row["parameters"]:>11,d} '
                 f'{row["images_per_second"]:>9.0f}')
  return '\n'.join(lines)


def _bar_plot(rows, path) -> bool:
  """Test top-1 of each run as a bar chart (Agg canvas); False without matplotlib."""
  try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  except ImportError:
    print('Plot skipped: pip install matplotlib')
    return False
  figure = Figure(figsize=(7, 4), dpi=100)
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  names = list(rows)
  values = [rows[name]['top_1'] for name in names]
  bars = axes.bar(range(len(names)), values, color=['#999999', '#4c72b0', '#55a868'][:len(names)])
  for bar, value in zip(bars, values):
    axes.text(bar.get_x() + bar.get_width() / 2, value + 0.01, f'{value:.3f}', ha='center')
  axes.set_xticks(range(len(names)), [name.split(' ', 1)[1] for name in names], fontsize=8)
  axes.set_ylim(0, 1.05)
  axes.set_ylabel('test top-1 accuracy')
  axes.set_title('Digits with 10% of the labels')
  figure.tight_layout()
  figure.savefig(path)
  return True


def define_flags(values):
  """The demo's own flags."""
  flags.DEFINE_string('model_dir', DEFAULT_MODEL_DIR, 'Where the three runs are written.',
                      flag_values=values)
  flags.DEFINE_integer('pretrain_epochs', None, 'Override the pretraining epochs of the recipe.',
                       flag_values=values)
  flags.DEFINE_integer('linear_eval_epochs', None, 'Override the linear-eval epochs.',
                       flag_values=values)
  flags.DEFINE_bool('semi_supervised', False, 'Run the SimCLRv2 semi-supervised demo (10% of the '
                    'labels: supervised baseline, pretrain + fine-tune, distillation) instead.',
                    flag_values=values)
  flags.DEFINE_integer('finetune_steps', 120, '--semi_supervised: steps of each 10% fine-tuning.',
                       flag_values=values)
  flags.DEFINE_integer('distill_epochs', 10, '--semi_supervised: epochs of the distillation.',
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
  if values.semi_supervised:
    console.print_header('simclr_tf2 demo: SimCLRv2 semi-supervised on digits (10% labels)',
                         describe(strategy), values.model_dir)
    rows = run_semi_supervised_demo(values.model_dir, values.pretrain_epochs,
                                    values.finetune_steps, values.distill_epochs,
                                    values.precision, strategy)
    console.print_summary({title: row['top_1'] for title, row in rows.items()},
                          {'results': os.path.join(values.model_dir,
                                                   'semi_supervised_results.json'),
                           'plot': os.path.join(values.model_dir, 'semi_supervised.png')},
                          seconds=time.monotonic() - start)
    return 0
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
