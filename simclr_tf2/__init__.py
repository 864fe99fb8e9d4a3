"""simclr_tf2: SimCLR v1/v2 in TensorFlow 2 + Keras 2 (tf_keras), checkpoint-compatible with
google-research/simclr `tf2/`.

The public API is importable from here; TensorFlow is imported only when a name that needs it is
first used, so `import simclr_tf2` stays cheap and sets nothing in the environment.
"""

import importlib

__version__ = '0.1.0'

# public name -> module that defines it
_EXPORTS = {
    'Config': 'simclr_tf2.config',
    'SimCLRTask': 'simclr_tf2.task',
    'Trainer': 'simclr_tf2.train',
    'Evaluator': 'simclr_tf2.train',
    'RunResult': 'simclr_tf2.train',
    'build_strategy': 'simclr_tf2.train',
    'Callback': 'simclr_tf2.callbacks',
    'load_model': 'simclr_tf2.loading',
    'LoadedModel': 'simclr_tf2.loading',
    'SimCLRError': 'simclr_tf2.errors',
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
