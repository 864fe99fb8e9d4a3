"""The package's shape: every module imports only its own layer or the ones below, and no two
modules import each other, directly or through others (imports inside functions count too).

Layers, bottom to top (README, "Architecture"):
  ground      errors, architecture, console, model_dir, summaries, compat, moved_modules
  settings    config, flags, recipes
  network     simclr_tf2/network/   the Keras model and its variables on disk
  data        simclr_tf2/data/      sources, augmentations, input pipeline
  distribute  distribute            strategies, chief and scratch directories
  inference   simclr_tf2/inference/ loading, embeddings, probes, plots, ablation
  training    simclr_tf2/training/  math, tasks, trainer, evaluator, run()
  commands    run, demo, embed, command
  conversion  checkpoints_conversion/
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAYERS = [
    {'simclr_tf2.errors', 'simclr_tf2.architecture', 'simclr_tf2.console', 'simclr_tf2.model_dir',
     'simclr_tf2.summaries', 'simclr_tf2.compat', 'simclr_tf2.moved_modules'},
    {'simclr_tf2.config', 'simclr_tf2.flags', 'simclr_tf2.recipes'},
    {'simclr_tf2.network'},
    {'simclr_tf2.data'},
    {'simclr_tf2.distribute'},
    {'simclr_tf2.inference'},
    {'simclr_tf2.training'},
    {'simclr_tf2.run', 'simclr_tf2.demo', 'simclr_tf2.embed', 'simclr_tf2.command'},
    {'checkpoints_conversion'},
]


def module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts.pop()
  return '.'.join(parts)


def modules():
  files = sorted((ROOT / 'simclr_tf2').rglob('*.py')) + sorted(
      (ROOT / 'checkpoints_conversion').glob('*.py'))
  return {module_name(path): path for path in files}


def layer_of(module: str) -> int:
  for index, members in enumerate(LAYERS):
    if any(module == member or module.startswith(member + '.') for member in members):
      return index
  raise AssertionError(f'{module} is in no layer: add it to LAYERS (and to the README)')


def imports_of(path: pathlib.Path, known) -> set:
  """The project modules a file imports (a name imported from a package counts as the
  submodule when it is one)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      found.add(node.module)
      found.update(f'{node.module}.{alias.name}' for alias in node.names)
  return {name for name in found if name in known}


MODULES = modules()
GRAPH = {name: imports_of(path, MODULES) - {name} for name, path in MODULES.items()}
# The package facade and the old-path shims re-export from everywhere by design.
FACADES = {'simclr_tf2', 'checkpoints_conversion.detect'}


def test_every_module_has_a_layer():
  for name in MODULES:
    if name not in FACADES:
      layer_of(name)


@pytest.mark.parametrize('name', sorted(set(MODULES) - FACADES))
def test_no_import_runs_up(name):
  upward = sorted(target for target in GRAPH[name] if target not in FACADES and
                  layer_of(target) > layer_of(name))
  assert not upward, f'{name} (layer {layer_of(name)}) imports higher layers: {upward}'


def test_no_import_cycle():
  # Depth-first search for a back edge; a package imports its own submodules (not a cycle).
  graph = {name: {t for t in targets if not t.startswith(name + '.')}
           for name, targets in GRAPH.items() if name not in FACADES}
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for target in sorted(graph.get(node, ())):
      if state.get(target) == 'open':
        cycle = stack[stack.index(target):] + [target]
        raise AssertionError('import cycle: ' + ' -> '.join(cycle))
      if target not in state:
        visit(target)
    stack.pop()
    state[node] = 'done'

  for name in sorted(graph):
    if name not in state:
      visit(name)


def test_the_check_catches_an_upward_import():
  assert layer_of('simclr_tf2.network.model') < layer_of('simclr_tf2.training.task')
  assert layer_of('checkpoints_conversion.cli') == len(LAYERS) - 1
