"""Load a trained SimCLR model for inference from whatever a user has at hand.

    from simclr_tf2.inference.loading import load_model
    loaded = load_model('/tmp/run')                   # a run's model_dir: latest checkpoint + config
    loaded = load_model('/tmp/other/ckpt-1000')       # a checkpoint; architecture detected
    loaded = load_model('/tmp/run/saved_model/1000')  # this project's export
    loaded = load_model('r50_1x_sk1/saved_model')     # an official TF2 SavedModel (K32)
    endpoints = loaded.model.call_with_endpoints(images)   # {'final_avg_pool': ..., ...}

Every form returns a `LoadedModel` whose `.model` is this project's Keras model holding the file's
weights. Restores are strict: a file that does not fit the model is a one-line
`CheckpointError`, never a partially initialised model.
"""

import contextlib
import logging
import os
from typing import Dict, Iterable, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from simclr_tf2.architecture import CIFAR_MAX_IMAGE_SIZE, DETECTED_FLAGS
from simclr_tf2.config import Config
from simclr_tf2.model_dir import RUN_CONFIG_FILE, SAVED_MODEL_SUBDIR
from simclr_tf2.network.checkpoint import (CheckpointError, describe_source, is_saved_model,
                                           read_shapes, resolve_checkpoint,
                                           restore_for_evaluation, restore_initial_weights,
                                           saved_model_object)
from simclr_tf2.network.detect import detect_architecture, ft_proj_selector_candidates
from simclr_tf2.network.model import build_model

GLOBAL_STEP_KEY = 'global_step/.ATTRIBUTES/VARIABLE_VALUE'


class LoadedModel(NamedTuple):
  """A restored model. `path` is the checkpoint prefix or SavedModel directory it came from;
  `global_step` is None when unknown (a model-only file, a SavedModel not under
  `saved_model/<step>`)."""
  model: object
  config: Config
  path: str
  global_step: Optional[int]


def config_for_checkpoint(shapes: Dict, base: Config, given: Iterable[str], source: str = ''
                          ) -> Tuple[Config, Optional[int]]:
  """(Config, num_classes) describing a checkpoint's `{key: shape}` map.

  Architecture fields in `given` keep `base`'s value (a contradiction then shows as a strict-
  restore error, never a silent fix); the others are detected from the shapes. Unless given, the
  model is built in pretrain mode with a linear-eval head exactly when the file has one.
  When the shapes fit several `ft_proj_selector` values (hidden projection layers are as wide as
  the encoder) and it is not given: for a SavedModel `source` the one whose `logits_sup`
  reproduce the SavedModel's own is taken; otherwise the official default 0 is used and a
  one-line warning says so.
  """
  detected = detect_architecture(shapes)
  given = set(given)
  settings = {name: detected[name] for name in DETECTED_FLAGS if name not in given}
  if 'train_mode' not in given:
    settings['train_mode'] = 'pretrain'
  if 'lineareval_while_pretraining' not in given:
    settings['lineareval_while_pretraining'] = detected['num_classes'] is not None
  config = base.replace(**settings)
  if 'ft_proj_selector' not in given:
    candidates = ft_proj_selector_candidates(shapes)
    if len(candidates) > 1:
      decided = (selector_from_outputs(source, config, detected['num_classes'], candidates)
                 if is_saved_model(source) else None)
      if decided is None:
        logging.warning(
            '%sft_proj_selector cannot be told from the shapes (%s fit): using %d; if the '
            'supervised head was trained on another layer its logits_sup would be wrong, so '
            'pass --ft_proj_selector or the model_dir with its config.json',
            f'{source}: ' if source else '', ', '.join(map(str, candidates)),
            config.ft_proj_selector)
      else:
        config = config.replace(ft_proj_selector=decided)
  return config, detected['num_classes']


def selector_from_outputs(path: str, config: Config, num_classes: int,
                          candidates: Sequence[int]) -> Optional[int]:
  """The one `ft_proj_selector` among `candidates` whose `logits_sup` reproduce the SavedModel's
  own on a fixed random batch; None when not exactly one does (or it has no `logits_sup`)."""
  loaded = saved_model_object(path)
  size = CIFAR_MAX_IMAGE_SIZE if config.image_size <= CIFAR_MAX_IMAGE_SIZE else 64
  images = tf.random.stateless_uniform([2, size, size, 3], seed=[25, 0])
  try:
    expected = loaded(images, trainable=False)
  except (TypeError, ValueError, tf.errors.OpError):  # not callable like an export
    return None
  if 'logits_sup' not in expected:
    return None
  expected = expected['logits_sup'].numpy()
  tolerance = 1e-4 * max(1., float(np.max(np.abs(expected))))
  # One model: the candidates differ only in which projection layer feeds the supervised head.
  model = build_model(num_classes, config.replace(ft_proj_selector=candidates[0]))
  restore_for_evaluation(model.create_variables(), path)
  fits = [candidate for candidate, logits in
          model.logits_by_ft_proj_selector(images, candidates).items()
          if float(np.max(np.abs(logits.numpy() - expected))) <= tolerance]
  if len(fits) == 1:
    logging.info('%s: ft_proj_selector=%d reproduces its logits_sup', path, fits[0])
    return fits[0]
  return None


def run_config_path(source: str) -> Optional[str]:
  """The `config.json` of the run a source belongs to: a model_dir, a checkpoint prefix inside
  one, or a SavedModel under `<model_dir>/saved_model/<step>`; None for anything else."""
  source = source.rstrip('/')
  if source.endswith('.index'):
    source = source[:-len('.index')]
  candidates = [source] if tf.io.gfile.isdir(source) else [os.path.dirname(source)]
  parent = os.path.dirname(source)
  if os.path.basename(parent) == SAVED_MODEL_SUBDIR:
    candidates.append(os.path.dirname(parent))
  for directory in candidates:
    path = os.path.join(directory, RUN_CONFIG_FILE)
    if directory and tf.io.gfile.exists(path):
      return path
  return None


def load_model(source: str, *, config: Optional[Config] = None, strategy=None,
               **overrides) -> LoadedModel:
  """Restores the model of a model_dir, a checkpoint (prefix or directory) or a SavedModel.

  - a run's model_dir, a checkpoint in one or a SavedModel it exported (`config.json` found):
    built with the run's Config (or `config` when given) plus `overrides`; nothing is detected.
  - other checkpoints and SavedModels (this project's exports and the official TF2 ones):
    architecture from `config` (all its fields count as given) and `overrides` (Config field
    names); anything not given is detected from the variable shapes, so official files load
    without flags.
  The result is always this project's Keras model with the file's weights, restored strictly.
  Variables are created in `strategy.scope()` when a strategy is given.
  """
  if not source:
    raise CheckpointError('no model source given: pass a model_dir, a checkpoint or a SavedModel')
  scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
  prefix = resolve_checkpoint(source)
  run_config = run_config_path(source)
  if config is None and run_config:
    config = Config.from_json(run_config)  # the run's own settings: nothing to detect
  base, given = _base_and_given(config, overrides)
  shapes = read_shapes(prefix)
  try:
    model_config, num_classes = config_for_checkpoint(shapes, base, given, prefix)
  except ValueError as error:
    if isinstance(error, CheckpointError):
      raise
    raise CheckpointError(f'{describe_source(prefix)}: {error}') from None
  with scope:
    model = build_model(num_classes, model_config).create_variables()
    if is_saved_model(prefix) or GLOBAL_STEP_KEY in shapes:
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
