"""errors: one-line messages and OS failures turned into one-line FileSystemErrors."""

import subprocess
import sys

import pytest
import tensorflow as tf

from golden_data import REPO


@pytest.mark.parametrize('error,expected', [
    (ValueError(''), 'ValueError'),
    (ValueError('   \n\n  '), 'ValueError'),
    (ValueError('\n  first\nsecond'), 'first'),
    (ValueError('model mismatch:\nmissing (2):\n  a\n  b\nextra (1):\n  c'),
     'model mismatch: missing (2): a, b, extra (1): c'),
    (KeyError(), 'KeyError'),
    (tf.errors.NotFoundError(None, None, 'no file x\n\t [[{{node Restore}}]]'), 'no file x'),
])


def test_settings_are_checked_without_loading_tensorflow():
  code = ('import sys; from simclr_tf2.config import Config\n'
          'try: Config(learning_rate=float("nan")).validate()\n'
          'except ValueError as e: print(e)\n'
          'print("tensorflow" in sys.modules)')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       cwd=str(REPO)).stdout
  assert out.splitlines() == ['--learning_rate=nan: must be finite', 'False']
