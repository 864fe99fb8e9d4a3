"""simclr_tf2: SimCLR v1/v2 in TensorFlow 2 + Keras 2 (tf_keras), checkpoint-compatible with
google-research/simclr `tf2/`.

The public API is importable from here; TensorFlow is imported only when a name that needs it is
first used, so `import simclr_tf2` stays cheap and sets nothing in the environment. Modules moved
into subpackages keep their old import paths (simclr_tf2.moved_modules), with a warning.
"""

import importlib

from simclr_tf2 import moved_modules

__version__ = '0.1.0'

# public name -> module that defines it
_EXPORTS = {
    'Config': 'simclr_tf2.config',
    'SimCLRTask': 'simclr_tf2.training.task',
    'Trainer': 'simclr_tf2.training.trainer',
    'Evaluator': 'simclr_tf2.training.evaluator',
    'RunResult': 'simclr_tf2.training.runner',
    'build_strategy': 'simclr_tf2.distribute',
    'Callback': 'simclr_tf2.training.callbacks',
    'load_model': 'simclr_tf2.inference.loading',
    'LoadedModel': 'simclr_tf2.inference.loading',
    'SimCLRError': 'simclr_tf2.errors',
}

__all__ = sorted(_EXPORTS)

moved_modules.install()


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
