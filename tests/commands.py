"""Running the commands in the test process, as users run them: through each command's
in-process entry point (the same flag parsing, checks and one-line errors as the console script)."""

import contextlib
import io

import tensorflow as tf

from simclr_tf2 import run


def run_main(args):
  """`simclr-tf2 ARGS` in this process under the default (one-device) strategy: (exit code,
  stdout, stderr). The command's own MirroredStrategy would share collective keys with
  conftest's two-replica strategy in this process."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = run.run_in_process(['run'] + list(args), strategy=tf.distribute.get_strategy())
  return code, out.getvalue(), err.getvalue()


def run_cli(module, capsys, *args):
  """(exit code, stdout, stderr) of a conversion command (`module.run`) in this process."""
  code = module.run(['prog', *args])
  out, err = capsys.readouterr()
  return code, out, err


def error_line(err):
  """The single non-empty stderr line (fails if there are several)."""
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1, f'expected one line on stderr, got {lines}'
  return lines[0]
