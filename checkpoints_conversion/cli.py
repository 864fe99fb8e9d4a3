"""What the conversion command lines add to simclr_tf2.command: a `--log_file` flag.

TensorFlow-free at import time: the console is quieted before the actions import it.
"""

from typing import Callable

from absl import flags

from simclr_tf2 import command, console


def _with_log_file(define_flags: Callable) -> Callable:
  def define(flag_values):
    define_flags(flag_values)
    flags.DEFINE_string('log_file', None, 'Also write the complete log (TensorFlow included) to '
                        'this file.', flag_values=flag_values)
  return define


def _logging_to_file(action: Callable) -> Callable:
  def logged(flag_values):
    if flag_values.log_file:
      console.setup_log_file(flag_values.log_file)
    return action(flag_values)
  return logged


def run(define_flags: Callable, action: Callable, argv) -> int:
  """In-process entry point: parses `argv` (argv[0] = program name); returns the exit code."""
  return command.run(_with_log_file(define_flags), _logging_to_file(action), argv)


def run_main(define_flags: Callable, action: Callable) -> None:
  """Console-script entry point: quiet console unless -v 1."""
  command.main(_with_log_file(define_flags), action, log_file=lambda values: values.log_file)
