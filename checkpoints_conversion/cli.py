"""What the conversion command lines share: flag parsing and one-line error reporting."""

import sys

from absl import app, flags
import tensorflow as tf

from simclr_tf2.errors import SimCLRError, one_line

# Errors reported as one `error: ...` line with exit code 1 (anything else is a bug: traceback).
USER_ERRORS = (SimCLRError, ValueError, TypeError, OSError, tf.errors.OpError)

def report_errors(action, flag_values) -> int:
  """Runs `action(flag_values)`; returns 0, or 1 after printing a one-line error."""
  try:
    action(flag_values)
  except USER_ERRORS as error:
    print(f'error: {one_line(error)}', file=sys.stderr)
    return 1
  return 0


def run(define_flags, action, argv) -> int:
  """In-process entry point: fresh flags parsed from `argv` (argv[0] = program name)."""
  flag_values = flags.FlagValues()
  define_flags(flag_values)
  try:
    flag_values(argv)
  except flags.Error as error:
    print(f'error: {one_line(error)}', file=sys.stderr)
    return 1
  return report_errors(action, flag_values)


def run_main(define_flags, action):
  """Console-script entry point over the global absl flags."""
  define_flags(flags.FLAGS)

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    sys.exit(report_errors(action, flags.FLAGS))

  app.run(main)
