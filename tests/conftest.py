"""Test session set-up: quiet TensorFlow, 2 logical CPU devices, golden-data paths."""

import os
import pathlib
import sys
from importlib import metadata

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
# The same for the commands the tests start (workers, the console's processes): several of them
# share the CPUs with the pytest-xdist processes, and TensorFlow reads these at start-up.
os.environ.setdefault('TF_NUM_INTRAOP_THREADS', '1')
os.environ.setdefault('TF_NUM_INTEROP_THREADS', '1')

import pytest  # noqa: E402
from packaging.version import Version  # noqa: E402

# Test helpers (golden_data.py, ...) importable from tests/unit and tests/e2e alike.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import session_scratch  # noqa: E402
from image_folders import write_image_folder  # noqa: E402

TWO_CPUS = ['/cpu:0', '/cpu:1']


def pytest_configure(config):
  """Refuses --dist loadgroup where it silently ignores the xdist_group marks (pytest 9.2 with
  pytest-xdist <= 3.8, pytest-xdist#1386): every group's session-scoped runs would then be built
  once per worker, unnoticed. Then sets TensorFlow up in every process that runs tests; the
  pytest-xdist controller runs none, so it starts its workers without loading TensorFlow
  (about 4 s sooner)."""
  xdist = config.pluginmanager.hasplugin('xdist') and config.getoption('numprocesses')
  if xdist and (config.getoption('dist') == 'loadgroup') and (
      Version(pytest.__version__) >= Version('9.2')
      and Version(metadata.version('pytest-xdist')) <= Version('3.8.0')):
    raise pytest.UsageError(f'pytest {pytest.__version__} makes pytest-xdist '
                            f'{metadata.version("pytest-xdist")} ignore xdist_group '
                            "(pytest-xdist#1386): install the test extra's pytest<9.2")
  if xdist and not hasattr(config, 'workerinput'):
    return
  # Under pytest's output capture, as the tests run: TensorFlow's start-up lines (oneDNN, no
  # CUDA) would otherwise reach the terminal, capture being paused between the start-up steps.
  capture = config.pluginmanager.getplugin('capturemanager')
  if capture is None:  # -p no:capture
    _set_up_tensorflow()
    return
  capture.resume_global_capture()
  try:
    _set_up_tensorflow()
  finally:
    capture.suspend_global_capture()
    capture.read_global_capture()  # discarded


def _set_up_tensorflow():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  # One thread per op and one op at a time: the pytest-xdist processes share the CPUs, and the
  # tiny test models gain nothing from more threads than their process's share.
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  # Split the CPU into two logical devices before TF initialises, so MirroredStrategy tests can
  # run sync BN and cross-replica losses without accelerators.
  cpu = tf.config.list_physical_devices('CPU')[0]
  tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


@pytest.fixture(scope='session', autouse=True)
def session_scratch_root(tmp_path_factory):
  session_scratch.set_root(tmp_path_factory.mktemp('session_scratch'))


@pytest.fixture(scope='session')
def golden_dir():
  from golden_data import GOLDEN_DIR  # pylint: disable=import-outside-toplevel
  return GOLDEN_DIR


@pytest.fixture(scope='session')
def two_replica_strategy():
  # One strategy per process: separate MirroredStrategy objects reuse collective instance keys,
  # and the runtime then mixes up their all-reduces.
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return tf.distribute.MirroredStrategy(devices=TWO_CPUS)


@pytest.fixture
def folder(tmp_path):
  """An image folder with every format case and two corrupt files (image_folders.py)."""
  return write_image_folder(tmp_path)


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
  """An empty working directory outside the repository."""
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  return cwd
