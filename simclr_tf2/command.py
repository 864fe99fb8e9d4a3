"""What every command line shares: its own flags, the quiet console and one-line errors.

    command.main(define_flags, action)              # console script: quiet unless -v 1
    command.run(define_flags, action, argv, **kw)    # in-process (tests, notebooks): exit code

`define_flags(values)` defines the command's flags on a fresh FlagValues (nothing reads absl's
global FLAGS); `-v/--verbosity` is added to every command. `--flagfile` takes a path or a
packaged recipe name, `--help` lists the command's own flags. `action(values, **kw)` does the
work; an int it returns is the exit code, anything else means 0. A user error (bad value, missing or corrupt file, a
SimCLRError) is one `error: ...` line on stderr and exit code 1, with the traceback at `-v 1`;
anything else is a bug and keeps its traceback.

TensorFlow-free at import time: the console is quieted before an action imports TensorFlow.
"""

import sys
import traceback
from typing import Callable, Optional, Sequence

from absl import app, flags

from simclr_tf2 import console, recipes
from simclr_tf2.errors import SimCLRError, one_line


def user_errors() -> tuple:
  """The exceptions reported as one line. A function: TensorFlow's error classes are imported
  only once the console is quiet."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return (SimCLRError, ValueError, TypeError, ImportError, OSError, tf.errors.OpError)


def new_flag_values(define_flags: Callable) -> flags.FlagValues:
  """A FlagValues with the command's flags and -v/--verbosity."""
  values = flags.FlagValues()
  define_flags(values)
  if 'verbosity' not in values:
    flags.DEFINE_integer('verbosity', 0, '0: quiet console (complete log in the log file); '
                         '>= 1: every log line on the console, and tracebacks of errors.',
                         short_name='v', flag_values=values)
  return values


def report_errors(action: Callable, values: flags.FlagValues, **kwargs) -> int:
  """Runs `action(values, **kwargs)`; returns its exit code, or 1 after a one-line error."""
  try:
    result = action(values, **kwargs)
  except Exception as error:  # pylint: disable=broad-except
    if not isinstance(error, user_errors()):
      raise
    if values.verbosity >= 1:
      traceback.print_exc()
    print(f'error: {one_line(error)}', file=sys.stderr)
    return 1
  return result if isinstance(result, int) and not isinstance(result, bool) else 0


def run(define_flags: Callable, action: Callable, argv: Sequence[str], **kwargs) -> int:
  """In-process entry point: the command's flags parsed from `argv` (argv[0] = program name),
  then the action. The process' console and logging are left as the caller set them up."""
  values = new_flag_values(define_flags)
  try:
    remaining = values(recipes.expand_flagfiles(argv))
  except (flags.Error, recipes.RecipeError) as error:
    print(f'error: {one_line(error)}', file=sys.stderr)
    return 1
  if len(remaining) > 1:
    print(f'error: unexpected arguments: {" ".join(remaining[1:])}', file=sys.stderr)
    return 1
  return report_errors(action, values, **kwargs)


def main(define_flags: Callable, action: Callable,
         log_file: Optional[Callable[[flags.FlagValues], Optional[str]]] = None) -> None:
  """Console-script entry point: parses the command line, quiets the console unless -v 1,
  appends the complete log to `log_file(values)` (when it names a file), runs the action and
  exits with its code."""
  values = new_flag_values(define_flags)

  def run_action(argv):
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    console.quiet_tensorflow(values.verbosity)
    path = log_file(values) if log_file else None
    if path:
      console.setup_log_file(path)
    sys.exit(report_errors(action, values))

  app.run(run_action, flags_parser=recipes.own_flags_parser(values))
