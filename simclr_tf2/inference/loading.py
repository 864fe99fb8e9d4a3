"""Load a trained SimCLR model for inference from whatever a user has at hand.

    from simclr_tf2.inference.loading import load_model
    loaded = load_model('/tmp/run')                   # a run's model_dir: latest checkpoint + config
    loaded = load_model('r50_1x_sk1/model.ckpt-250228')  # a checkpoint; architecture detected
    loaded = load_model('/tmp/run/saved_model/1000')  # an exported SavedModel
    endpoints = loaded.model.call_with_endpoints(images)   # {'final_avg_pool': ..., ...}

Every form returns a `LoadedModel` whose `.model` has `call_with_endpoints(images, training=False)`
(the SavedModel's endpoint dict). Restores are strict: a file that does not fit the model is a
one-line `CheckpointError`, never a partially initialised model.
"""

import contextlib
import os
import re
from typing import Dict, Iterable, NamedTuple, Optional, Tuple

import tensorflow as tf

from simclr_tf2.network.detect import detect_architecture
from simclr_tf2.architecture import DETECTED_FLAGS
from simclr_tf2.network.checkpoint import CheckpointError, read_shapes, resolve_checkpoint
from simclr_tf2.network.checkpoint import restore_for_evaluation, restore_initial_weights
from simclr_tf2.config import Config
from simclr_tf2.model_dir import RUN_CONFIG_FILE
from simclr_tf2.network.model import build_model

SAVED_MODEL_FILE = 'saved_model.pb'
GLOBAL_STEP_KEY = 'global_step/.ATTRIBUTES/VARIABLE_VALUE'


class LoadedModel(NamedTuple):
  """A restored model. `path` is the checkpoint prefix or SavedModel directory it came from;
  `global_step` is None when unknown (a SavedModel not under `saved_model/<step>`)."""
  model: object
  config: Config
  path: str
  global_step: Optional[int]


def config_for_checkpoint(shapes: Dict, base: Config, given: Iterable[str]
                          ) -> Tuple[Config, Optional[int]]:
  """(Config, num_classes) describing a checkpoint's `{key: shape}` map.

  Architecture fields in `given` keep `base`'s value (a contradiction then shows as a strict-
  restore error, never a silent fix); the others are detected from the shapes. Unless given, the
  model is built in pretrain mode with a linear-eval head exactly when the file has one. Shapes
  cannot reveal `ft_proj_selector` values other than 0 and -1.
  """
  detected = detect_architecture(shapes)
  given = set(given)
  settings = {name: detected[name] for name in DETECTED_FLAGS if name not in given}
  if 'train_mode' not in given:
    settings['train_mode'] = 'pretrain'
  if 'lineareval_while_pretraining' not in given:
    settings['lineareval_while_pretraining'] = detected['num_classes'] is not None
  return base.replace(**settings), detected['num_classes']


def load_model(source: str, *, config: Optional[Config] = None, strategy=None,
               **overrides) -> LoadedModel:
  """Restores the model of a model_dir, a checkpoint (prefix or directory) or a SavedModel.

  - model_dir (has `config.json`): its latest checkpoint, built with the run's Config (or
    `config` when given) plus `overrides`; nothing is detected.
  - checkpoint: architecture from `config` (all its fields count as given) and `overrides`
    (Config field names); anything not given is detected from the variable shapes, so official
    checkpoints load without flags.
  - SavedModel directory: a `SavedModelEncoder`; its Config is detected from the variables.
  Variables are created in `strategy.scope()` when a strategy is given.
  """
  if not source:
    raise CheckpointError('no model source given: pass a model_dir, a checkpoint or a SavedModel')
  scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
  if tf.io.gfile.exists(os.path.join(source, SAVED_MODEL_FILE)):
    with scope:
      return _load_saved_model(source, config, overrides)
  run_config = os.path.join(source, RUN_CONFIG_FILE)
  if config is None and tf.io.gfile.isdir(source) and tf.io.gfile.exists(run_config):
    config = Config.from_json(run_config)  # the run's own settings: nothing to detect
  base, given = _base_and_given(config, overrides)
  prefix = resolve_checkpoint(source)
  shapes = read_shapes(prefix)
  try:
    model_config, num_classes = config_for_checkpoint(shapes, base, given)
  except ValueError as error:
    if isinstance(error, CheckpointError):
      raise
    raise CheckpointError(f'checkpoint {prefix}: {error}') from None
  with scope:
    model = build_model(num_classes, model_config).create_variables()
    if GLOBAL_STEP_KEY in shapes:
      _, global_step = restore_for_evaluation(model, prefix)
    else:  # e.g. model-only exports of other tools: same strictness, step unknown
      _, head_restored = restore_initial_weights(model, prefix)
      if model.has_supervised_head and not head_restored:
        raise CheckpointError(f'checkpoint {prefix}: its supervised head does not fit the model '
                              f'({num_classes} classes)')
      global_step = None
  return LoadedModel(model, model_config, prefix, global_step)


def _base_and_given(config, overrides):
  """The Config to start from and the names not to detect: all of an explicit config's fields,
  else only the overridden ones."""
  base = (config or Config()).replace(**overrides) if overrides else (config or Config())
  given = {f.name for f in Config.fields()} if config is not None else set(overrides)
  return base, given


class SavedModelEncoder:
  """An exported SimCLR SavedModel behind the same `call_with_endpoints` as SimCLRModel."""

  def __init__(self, loaded, config: Config):
    self.loaded = loaded
    self.simclr_config = config

  def call_with_endpoints(self, images, training: bool = False, blur: bool = False):
    del blur  # exports never blur (K25)
    return dict(self.loaded(images, trainable=bool(training)))


def _load_saved_model(path, config, overrides) -> LoadedModel:
  # Imported here: only this form needs the SavedModel machinery.
  from simclr_tf2.network.export import load_saved_model, loaded_model_variables  # pylint: disable=import-outside-toplevel
  loaded = load_saved_model(path)
  shapes = {key: list(value.shape) for key, value in loaded_model_variables(loaded).items()}
  base, given = _base_and_given(config, overrides)
  try:
    model_config, _ = config_for_checkpoint(shapes, base, given)
  except ValueError as error:
    raise CheckpointError(f'SavedModel {path}: {error}') from None
  step = re.fullmatch(r'\d+', os.path.basename(path.rstrip('/')))
  return LoadedModel(SavedModelEncoder(loaded, model_config), model_config, path,
                     int(step.group(0)) if step else None)
