"""absl entry point: `python -m simclr_tf2.run --flagfile=...` or the `simclr-tf2` command.

Defines the 48 official flags (and this port's additions) from `Config`, parses them, and hands a
validated Config to `train.run`. Nothing else in the package reads flags.
"""

import json
import logging as std_logging
import os
import sys
import traceback

from absl import app, flags, logging

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
  """Runs the parsed flags' mode; returns the exit code. `strategy`: see train.run."""
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
  std_logging.getLogger('tensorflow').setLevel(std_logging.WARNING)  # keep progress readable
  try:
    result = train.run(config, strategy, flag_values=_flag_values_json())
  except (ValueError, SimCLRError) as error:
    if logging.get_verbosity() >= logging.DEBUG:  # --verbosity=1: the traceback too
      traceback.print_exc()
    print(f'error: {one_line(error)}', file=sys.stderr)
    return 1
  if result.metrics:
    print(json.dumps(result.metrics, indent=2, sort_keys=True))
  return 0


def run_main():
  """Console-script entry point (`simclr-tf2`); `--flagfile` takes a path or a recipe name."""
  os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')  # see README "Python API"
  from simclr_tf2 import recipes  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.INFO)
  app.run(main, flags_parser=recipes.flags_parser(FLAGS))


if __name__ == '__main__':
  run_main()
