"""A run's settings on disk, and what a resumed run may change.

A run writes flags.json (its command line) and config.json (every setting) into model_dir. A
run that resumes from model_dir's checkpoints is compared with config.json before anything is
written: a change to the model (architecture, train mode, optimizer) is refused, naming the
differences; any other change (more epochs, another learning rate, ...) is kept, said in one
warning line and appended to settings_history.jsonl, so config.json never changes silently.
"""

import datetime
import json
import logging
import os
from typing import Dict, Optional, Tuple

import tensorflow as tf

from simclr_tf2.architecture import DETECTED_FLAGS
from simclr_tf2.config import Config
from simclr_tf2.errors import ConfigError, os_errors
from simclr_tf2.model_dir import (FLAGS_FILE, RUN_CONFIG_FILE, SETTINGS_HISTORY_FILE,
                                  write_json)

# Settings that change the model's variables or their optimizer state: a resumed run must keep them.
MODEL_SETTINGS = DETECTED_FLAGS + ('train_mode', 'lineareval_while_pretraining', 'optimizer',
                                   'fine_tune_after_block')
# Settings that name the run rather than describe it.
NOT_COMPARED = ('model_dir',)

Changes = Dict[str, Tuple[object, object]]


def settings_changes(config: Config, model_dir: str) -> Changes:
  """{setting: (value in model_dir's config.json, value now)} for every setting that differs;
  empty when model_dir has no config.json."""
  path = os.path.join(model_dir, RUN_CONFIG_FILE)
  if not tf.io.gfile.exists(path):
    return {}
  with os_errors('read', path):
    with tf.io.gfile.GFile(path) as f:
      try:
        previous = json.load(f)
      except ValueError as error:
        raise ConfigError(f'{path} is not valid JSON ({error}); restore it from a backup or '
                          'delete it to resume with the settings given now') from None
  now = config.to_dict()
  return {name: (previous.get(name), value) for name, value in now.items()
          if name not in NOT_COMPARED and previous.get(name, value) != value}


def describe_changes(changes: Changes) -> str:
  """`name old -> new, ...` in one line."""
  return ', '.join(f'{name} {old!r} -> {new!r}' for name, (old, new) in sorted(changes.items()))


def check_resumable(config: Config, model_dir: str) -> Changes:
  """The changes a resumed run brings; a ConfigError if any of them changes the model."""
  changes = settings_changes(config, model_dir)
  refused = {name: change for name, change in changes.items() if name in MODEL_SETTINGS}
  if refused:
    raise ConfigError(f'{model_dir} holds a run with other model settings ({describe_changes(refused)}); '
                      'resume it with its own settings (its config.json), or start a new '
                      '--model_dir (with --checkpoint to start from its weights)')
  return changes


def record_settings(config: Config, flag_values: Optional[dict], changes: Changes,
                    global_step: int) -> None:
  """Writes flags.json and config.json; a resumed run's changes are logged in one line and
  appended to settings_history.jsonl with the step they apply from."""
  model_dir = config.model_dir
  if changes:
    logging.warning('Resuming at step %d with changed settings: %s (kept in %s).', global_step,
                    describe_changes(changes), SETTINGS_HISTORY_FILE)
    entry = {'time': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
             'global_step': global_step,
             'changes': {name: {'from': old, 'to': new} for name, (old, new) in changes.items()}}
    path = os.path.join(model_dir, SETTINGS_HISTORY_FILE)
    with os_errors('write', path):
      with tf.io.gfile.GFile(path, 'a') as f:
        f.write(json.dumps(entry, sort_keys=True) + '\n')
  if flag_values is not None:
    write_json(os.path.join(model_dir, FLAGS_FILE), flag_values)
  write_json(os.path.join(model_dir, RUN_CONFIG_FILE), config.to_dict())
