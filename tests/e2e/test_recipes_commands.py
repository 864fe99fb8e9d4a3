"""Recipes on the real command line (a fresh process)."""

import os
import subprocess
import sys

from golden_data import REPO

FLAGS_DIR = REPO / 'flags'


def test_command_line_reports_a_missing_recipe_in_one_line(elsewhere):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, '-m', 'simclr_tf2.run', '--flagfile=no_such_recipe'],
                        capture_output=True, text=True, env=env, timeout=120, check=False)
  assert proc.returncode == 1
  assert proc.stderr.startswith('error: flagfile not found: no_such_recipe ')
  assert proc.stderr.count('\n') == 1
