"""absl entry point: `python -m simclr_tf2.run --flagfile=...` or the `simclr-tf2` command.

Defines the 48 official flags (and this port's additions) from `Config`, parses them, and hands a
validated Config to `train.run`. Nothing else in the package reads flags.
"""

import json
import os
import sys
import time
import traceback

from absl import app, flags, logging

from simclr_tf2 import console, recipes
from simclr_tf2 import flags as config_flags

config_flags.define_config_flags()
FLAGS = flags.FLAGS


def _flag_values_json():
  """All flag values (absl's own included) that JSON can hold, like the reference's flags.json."""
  values = {}
  for name in FLAGS:
    value = FLAGS[name].value
    try:
      json.dumps(value)
    except (TypeError, ValueError):
      continue
    values[name] = value
  return values


def main(argv, strategy=None):
  """Runs the parsed flags' mode; returns the exit code. `strategy`: see train.run.

  Leaves the process' console as the caller set it up (run_main quiets TensorFlow first)."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    config = config_flags.config_from_flags(FLAGS)
  except ValueError as error:
    print(f'error: {error}', file=sys.stderr)
    return 1
  if not config.model_dir:
    print('error: --model_dir is required', file=sys.stderr)
    return 1
  # Imported after flag validation so a bad flag fails fast, before TensorFlow loads.
  from simclr_tf2 import train  # pylint: disable=import-outside-toplevel
  from simclr_tf2.errors import SimCLRError, one_line  # pylint: disable=import-outside-toplevel
  start = time.monotonic()
  console.print_header(f'simclr-tf2 {config.mode} ({config.train_mode}, ResNet-'
                       f'{config.resnet_depth} on {config.dataset})', console.device_names(),
                       config.model_dir)
  try:
    quiet = console.is_quiet()
    result = train.run(config, strategy,
                       callbacks=train.default_callbacks(config, progress_bar=quiet),
                       flag_values=_flag_values_json(), log_file=True, eval_progress_bar=quiet)
  except (ValueError, SimCLRError) as error:
    if logging.get_verbosity() >= logging.DEBUG:  # --verbosity=1: the traceback too
      traceback.print_exc()
    print(f'error: {one_line(error)}', file=sys.stderr)
    return 1
  log_dir = config.model_dir if config.mode != 'eval' else os.path.join(config.model_dir,
                                                                         train.EVAL_SUBDIR)
  console.print_summary(result.metrics or {}, {
      'checkpoint': result.checkpoint, 'saved_model': result.saved_model,
      'results': result.metrics and os.path.join(config.model_dir, 'result.json'),
      'log': os.path.join(log_dir, console.LOG_FILE_NAME)}, seconds=time.monotonic() - start)
  return 0


def _quiet_main(argv):
  console.quiet_tensorflow(FLAGS.verbosity)
  return main(argv)


def run_main():
  """Console-script entry point (`simclr-tf2`); `--flagfile` takes a path or a recipe name."""
  os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')  # Keras 2 (docs/api.md)
  logging.set_verbosity(logging.INFO)
  app.run(_quiet_main, flags_parser=recipes.flags_parser(FLAGS))


if __name__ == '__main__':
  run_main()
