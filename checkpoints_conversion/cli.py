"""What the conversion command lines share: flag parsing (`--flagfile` takes a path or a recipe
name), the quiet console and one-line errors.

TensorFlow-free at import time: `run_main` quiets TensorFlow (simclr_tf2.console) before the
actions import it.
"""

import sys

from absl import app, flags

from simclr_tf2 import console, recipes
from simclr_tf2.errors import SimCLRError, one_line


def user_errors():
  """Errors reported as one `error: ...` line with exit code 1 (anything else is a bug:
  traceback). A function, so TensorFlow is imported only once the console is quiet."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return (SimCLRError, ValueError, TypeError, OSError, tf.errors.OpError)


def define_log_file_flag(flag_values):
  flags.DEFINE_string('log_file', None, 'Also write the complete log (TensorFlow included) to '
                      'this file.', flag_values=flag_values)


def report_errors(action, flag_values) -> int:
  """Runs `action(flag_values)`; returns 0, or 1 after printing a one-line error."""
  try:
    action(flag_values)
  except Exception as error:  # pylint: disable=broad-except
    if not isinstance(error, user_errors()):
      raise
    print(f'error: {one_line(error)}', file=sys.stderr)
    return 1
  return 0


def run(define_flags, action, argv) -> int:
  """In-process entry point: fresh flags parsed from `argv` (argv[0] = program name). The
  process' console and logging are left as the caller set them up."""
  flag_values = flags.FlagValues()
  define_flags(flag_values)
  define_log_file_flag(flag_values)
  try:
    flag_values(recipes.expand_flagfiles(argv))
  except (flags.Error, recipes.RecipeError) as error:
    print(f'error: {one_line(error)}', file=sys.stderr)
    return 1
  if flag_values.log_file:
    console.setup_log_file(flag_values.log_file)
  return report_errors(action, flag_values)


def run_main(define_flags, action):
  """Console-script entry point over the global absl flags: quiet unless `-v 1`."""
  define_flags(flags.FLAGS)
  define_log_file_flag(flags.FLAGS)

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    console.quiet_tensorflow(flags.FLAGS.verbosity)
    if flags.FLAGS.log_file:
      console.setup_log_file(flags.FLAGS.log_file)
    sys.exit(report_errors(action, flags.FLAGS))

  app.run(main, flags_parser=recipes.flags_parser(flags.FLAGS))
