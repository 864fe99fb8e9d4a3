"""Old import paths of moved modules keep working for a release, with a FutureWarning that names
the new place."""

import importlib
import sys
import warnings

import pytest

from simclr_tf2 import moved_modules


@pytest.mark.parametrize('old, name, new', [
    ('simclr_tf2.train', 'run', 'simclr_tf2.training.runner'),
    ('simclr_tf2.train', 'build_strategy', 'simclr_tf2.distribute'),
    ('simclr_tf2.probes', 'KnnMonitor', 'simclr_tf2.training.knn_monitor'),
    ('simclr_tf2.probes', 'knn_accuracy', 'simclr_tf2.inference.probes'),
    ('simclr_tf2.model', 'build_model', 'simclr_tf2.network.model'),
    ('simclr_tf2.task', 'SimCLRTask', 'simclr_tf2.training.task'),
])
def test_old_path_gives_the_same_object_with_a_warning(old, name, new):
  sys.modules.pop(old, None)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    module = importlib.import_module(old)
  assert getattr(module, name) is getattr(importlib.import_module(new), name)
  assert any(issubclass(w.category, FutureWarning) and new in str(w.message) for w in caught)


def test_checkpoints_conversion_detect_moved():
  sys.modules.pop('checkpoints_conversion.detect', None)
  with pytest.warns(FutureWarning, match='simclr_tf2.network.detect'):
    from checkpoints_conversion.detect import detect_architecture  # pylint: disable=import-outside-toplevel
  from simclr_tf2.network.detect import detect_architecture as moved  # pylint: disable=import-outside-toplevel
  assert detect_architecture is moved


def test_every_moved_module_resolves():
  for old, targets in moved_modules.MOVED.items():
    for target in targets:
      importlib.import_module(target)
    assert old not in targets
