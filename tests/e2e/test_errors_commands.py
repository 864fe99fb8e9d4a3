"""A bad setting is a one-line error before TensorFlow is even imported (a fresh process)."""

import subprocess
import sys

from golden_data import REPO


def test_settings_are_checked_without_loading_tensorflow():
  code = ('import sys; from simclr_tf2.config import Config\n'
          'try: Config(learning_rate=float("nan")).validate()\n'
          'except ValueError as e: print(e)\n'
          'print("tensorflow" in sys.modules)')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       cwd=str(REPO)).stdout
  assert out.splitlines() == ['--learning_rate=nan: must be finite', 'False']
