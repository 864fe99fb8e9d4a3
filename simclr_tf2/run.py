"""absl entry point: `python -m simclr_tf2.run --flagfile=...` or the `simclr-tf2` command.

Defines the 48 official flags (and this port's additions) from `Config` on its own FlagValues,
parses them, builds the distribution strategy first (a multi-worker cluster must be configured
before anything touches TensorFlow's devices), checks that every worker of a cluster runs the
same settings, then hands a Config to `simclr_tf2.training.runner.run`; a worker of the cluster
that stops during the run is one `error:` line naming it (docs/distributed.md). Nothing else in
the package reads flags.
"""

import json
import os
import sys
import time
from typing import Optional, Sequence

from simclr_tf2 import command, console
from simclr_tf2 import flags as config_flags


def define_flags(values) -> None:
  config_flags.define_config_flags(values)


def flag_values_json(values) -> dict:
  """The command's flag values that JSON can hold, like the reference's flags.json."""
  result = {}
  for name in values:
    value = values[name].value
    try:
      json.dumps(value)
    except (TypeError, ValueError):
      continue
    result[name] = value
  return result


def main(values, strategy=None) -> int:
  """Runs the parsed flags' mode; returns the exit code. `strategy`: see runner.run (default:
  the strategy the flags and the environment ask for)."""
  config = config_flags.config_from_flags(values)  # a bad value: one line, before TensorFlow
  if not config.model_dir:
    print('error: --model_dir is required', file=sys.stderr)
    return 1
  # pylint: disable=import-outside-toplevel  (TensorFlow loads after the console is quiet)
  from simclr_tf2.distribute import (build_strategy, check_workers_agree, describe, is_chief,
                                     worker_failures)
  from simclr_tf2.training.runner import run
  from simclr_tf2.training.trainer import default_callbacks
  start = time.monotonic()
  strategy = strategy or build_strategy(config)
  console.print_header(f'simclr-tf2 {config.mode} ({config.train_mode}, ResNet-'
                       f'{config.resnet_depth} on {config.dataset})', describe(strategy),
                       config.model_dir)
  check_workers_agree(strategy, config)  # a cluster's workers: one config, or an error on each
  quiet = console.is_quiet()
  with worker_failures(strategy):  # another worker stopped: one line naming it, on every other
    result = run(config, strategy, callbacks=default_callbacks(config, progress_bar=quiet),
                 flag_values=flag_values_json(values), log_file=True, eval_progress_bar=quiet)
  chief = is_chief(strategy)  # the other workers of a cluster write no results and no log
  console.print_summary(result.metrics or {}, {
      'checkpoint': result.checkpoint, 'saved_model': result.saved_model,
      'results': chief and result.metrics and os.path.join(result.output_dir, 'result.json'),
      'log': chief and os.path.join(result.output_dir, console.LOG_FILE_NAME)},
      seconds=time.monotonic() - start)
  return 0


def run_in_process(argv: Sequence[str], strategy=None) -> int:
  """The command in this process (argv[0] = program name); returns the exit code."""
  return command.run(define_flags, main, argv, strategy=strategy)


def run_main(argv: Optional[Sequence[str]] = None) -> None:
  """Console-script entry point (`simclr-tf2`); `--flagfile` takes a path or a recipe name."""
  del argv
  os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')  # Keras 2 for users' tf.keras (docs/api.md)
  command.main(define_flags, main)


if __name__ == '__main__':
  run_main()
