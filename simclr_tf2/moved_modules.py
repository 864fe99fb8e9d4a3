"""Old import paths of modules that moved into subpackages keep working, with a warning.

`import simclr_tf2.train` (and the like) finds a module whose names are those of the modules
that now hold them; a FutureWarning names the new place. Remove an entry one release after
its move.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# old module -> the modules that now hold its public names (searched in this order)
MOVED = {
    'simclr_tf2.train': ('simclr_tf2.training.runner', 'simclr_tf2.training.trainer',
                         'simclr_tf2.training.evaluator', 'simclr_tf2.distribute',
                         'simclr_tf2.data', 'simclr_tf2.model_dir', 'simclr_tf2.summaries'),
    'simclr_tf2.probes': ('simclr_tf2.inference.probes', 'simclr_tf2.training.knn_monitor'),
    **{f'simclr_tf2.{name}': (f'simclr_tf2.network.{name}',)
       for name in ('resnet', 'heads', 'blur', 'model', 'checkpoint', 'export')},
    **{f'simclr_tf2.{name}': (f'simclr_tf2.inference.{name}',)
       for name in ('loading', 'plots', 'ablation')},
    **{f'simclr_tf2.{name}': (f'simclr_tf2.training.{name}',)
       for name in ('objective', 'lars', 'schedule', 'metrics', 'callbacks', 'task')},
    'simclr_tf2.augment': ('simclr_tf2.data.augment',),
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Finds the old names of MOVED; the module it makes looks names up in the new modules."""

  def find_spec(self, fullname, path=None, target=None):  # pylint: disable=unused-argument
    if fullname in MOVED:
      return importlib.util.spec_from_loader(fullname, self)
    return None

  def create_module(self, spec):
    return None  # the default module object

  def exec_module(self, module):
    targets = MOVED[module.__name__]
    warnings.warn(f'{module.__name__} moved to {" / ".join(targets)}; the old path will be '
                  'removed in a later release', FutureWarning, stacklevel=3)
    for target in reversed(targets):  # the first module wins a name defined twice
      module.__dict__.update({name: value for name, value in
                              vars(importlib.import_module(target)).items()
                              if not name.startswith('__')})


def install() -> None:
  """Puts the finder first on sys.meta_path, once (called by `import simclr_tf2`): it answers
  only for the names of MOVED, which must not be found as files of an older install."""
  if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModuleFinder())
