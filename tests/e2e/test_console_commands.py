"""The console of the real commands (fresh processes): quiet by default with a complete log
file, everything at -v 1 (the command shell's flag, the same for every command: checked once, on
the export tool, the cheaper process)."""

import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf

from golden_data import REPO
from simclr_tf2.network.model import build_model

# One xdist worker runs this module, so its session-scoped runs are built once (module-scoped
# ones were built again when the worker's test order left the module and came back).
pytestmark = pytest.mark.xdist_group('test_console_commands')

# Lines of TensorFlow's C++ loggers (absl and tsl formats) and of Python's warnings module.
CPP_LOG_LINE = re.compile(r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] |[IWE]\d{4} )')
PYTHON_WARNING = re.compile(r'Warning: ')


@pytest.mark.slow
def test_cli_console_is_quiet_by_default_and_the_log_file_is_complete(tiny_checkpoint, tmp_path):
  code, lines, log_file = _run_export_cli(tiny_checkpoint, tmp_path)
  assert code == 0, '\n'.join(lines)
  assert _noise(lines) == [], '\n'.join(lines)
  assert lines[0].startswith('simclr-export-saved-model: ') and ' | devices: ' in lines[0]
  assert lines[1].startswith('done in ') and 'step 7' in lines[1]
  assert len(lines) <= 6, '\n'.join(lines)
  # TensorFlow's start-up lines were moved into the log file, not lost.
  assert any(CPP_LOG_LINE.match(line) for line in log_file.read_text().splitlines())


@pytest.mark.slow
def test_cli_verbosity_1_shows_the_full_logs(tiny_checkpoint, tmp_path):
  code, lines, log_file = _run_export_cli(tiny_checkpoint, tmp_path, '--verbosity=1')
  assert code == 0, '\n'.join(lines)
  assert _noise(lines), '\n'.join(lines)
  assert log_file.exists()


@pytest.mark.slow
def test_training_console_is_header_progress_summary_and_the_log_file_has_the_rest(tmp_path):
  code, lines = _run_training(tmp_path / 'run')
  assert code == 0, '\n'.join(lines)
  assert _noise(lines) == [], '\n'.join(lines)
  assert lines[0].startswith('simclr-tf2 train (pretrain, ResNet-18 on digits) | devices: ')
  progress = [line for line in lines if line.startswith('train  [')]
  assert [line.split('  ')[2] for line in progress] == ['2/4 steps', '4/4 steps']
  assert all(' loss ' in line and 'images/s' in line for line in progress)
  summary = lines.index(next(line for line in lines if line.startswith('done in ')))
  assert lines[summary + 1:] == [f'  checkpoint: {tmp_path / "run" / "ckpt-4"}',
                                 f'  saved_model: {tmp_path / "run" / "saved_model" / "4"}',
                                 f'  log: {tmp_path / "run" / "log.txt"}']
  assert len(lines) <= 24, '\n'.join(lines)  # fits in a screen
  log = (tmp_path / 'run' / 'log.txt').read_text().splitlines()
  assert any(CPP_LOG_LINE.match(line) for line in log)  # moved from the console, not lost
  assert any('step 4/4' in line for line in log)


def _run_export_cli(tiny_checkpoint, tmp_path, *extra):
  """(exit code, stdout + stderr lines, log file path) of the export CLI in a fresh process."""
  env = {k: v for k, v in os.environ.items() if not k.startswith('TF_CPP_')}  # TF's defaults
  log_file = tmp_path / 'export.log'
  result = subprocess.run(
      [sys.executable, '-m', 'checkpoints_conversion.export_saved_model',
       f'--checkpoint={tiny_checkpoint}', f'--export_dir={tmp_path / "export"}',
       f'--log_file={log_file}', *extra],
      cwd=str(REPO), env=env, capture_output=True, text=True, timeout=600, check=False)
  return result.returncode, (result.stdout + result.stderr).splitlines(), log_file


def _noise(lines):
  return [line for line in lines if CPP_LOG_LINE.match(line) or PYTHON_WARNING.search(line)]


def _run_training(model_dir):
  """(exit code, stdout + stderr lines) of a 4-step `simclr-tf2` pretraining in a fresh process
  whose output is a pipe (not a terminal: one plain progress line per checkpoint)."""
  env = {k: v for k, v in os.environ.items() if not k.startswith('TF_CPP_')}
  result = subprocess.run(
      [sys.executable, '-m', 'simclr_tf2.run', '--flagfile=digits_demo', '--train_steps=4',
       '--checkpoint_steps=2', '--train_batch_size=16', '--image_size=8', '--warmup_epochs=0',
       f'--model_dir={model_dir}'],
      cwd=str(REPO), env=env, capture_output=True, text=True, timeout=600, check=False)
  return result.returncode, (result.stdout + result.stderr).splitlines()


@pytest.fixture(name='tiny_checkpoint', scope='session')
def tiny_checkpoint_fixture(tmp_path_factory):
  directory = tmp_path_factory.mktemp('tiny_ckpt')
  model = build_model(10, resnet_depth=18, image_size=32, lineareval_while_pretraining=True)
  model.create_variables()
  tf.train.Checkpoint(model=model, global_step=tf.Variable(7, dtype=tf.int64)).write(
      str(directory / 'ckpt-7'))
  return directory
