"""Export a SimCLR TF2 training checkpoint (or re-export a SavedModel) as a SavedModel.

Layout of the export: docs/architecture-notes.md, "SavedModel layout".

  python -m checkpoints_conversion.export_saved_model --checkpoint=MODEL_DIR_PREFIX_OR_SAVED_MODEL \
      --export_dir=DIR [--resnet_depth=50 ... | --flagfile=run_flags.cfg]

A model_dir, or a checkpoint / export inside one, is built with the run's config.json (given flags
on top). Otherwise architecture flags that are not given are detected from the variable shapes;
given flags win (a contradiction is reported, not silently fixed). Without an explicit
--train_mode the model is built in pretrain mode with a supervised head exactly when the file has
one; pass --train_mode=finetune (or the run's --flagfile) to export fine-tuning trainability.
Shapes cannot tell --ft_proj_selector=0 from 1 (hidden projection layers are as wide as the
encoder): without config.json or the flag, 0 is used and a warning says so. The restore is strict
and nothing is written on any error.
"""

import time
from typing import Optional

from absl import flags

from checkpoints_conversion import cli
from simclr_tf2 import console
from simclr_tf2.config import Config
from simclr_tf2.flags import define_config_flags, explicitly_set


def define_flags(flag_values):
  define_config_flags(flag_values)  # includes --checkpoint and every architecture flag
  flags.DEFINE_string('export_dir', None, 'Directory to write the SavedModel to (replaced if it '
                      'exists).', flag_values=flag_values)


def export_checkpoint(flag_values) -> str:
  """Builds the model the flags and checkpoint describe, restores it strictly and exports it."""
  # pylint: disable=import-outside-toplevel  (TensorFlow loads after the console is quiet)
  from simclr_tf2.network.checkpoint import read_shapes, resolve_checkpoint, restore_for_evaluation
  from simclr_tf2.network.export import export_saved_model
  from simclr_tf2.inference.loading import (DETECTED_FLAGS, config_for_checkpoint,
                                            run_config_path)
  from simclr_tf2.network.model import build_model
  start = time.monotonic()
  if not flag_values.export_dir:
    raise ValueError('--export_dir is required')
  console.print_header(f'simclr-export-saved-model: {flag_values.checkpoint} -> SavedModel',
                       console.device_names(), flag_values.export_dir)
  prefix = resolve_checkpoint(flag_values.checkpoint)
  base, given = settings_of(flag_values, run_config_path(flag_values.checkpoint))
  config, num_classes = config_for_checkpoint(read_shapes(prefix), base, given, prefix)
  model = build_model(num_classes, config).create_variables()
  _, global_step = restore_for_evaluation(model, prefix)
  path = export_saved_model(model, flag_values.export_dir)
  console.print_summary(
      {'step': global_step, **{name: getattr(config, name) for name in DETECTED_FLAGS},
       'classes': num_classes},
      {'checkpoint': prefix, 'saved_model': path}, seconds=time.monotonic() - start)
  return path


def settings_of(flag_values, run_config: Optional[str]):
  """(base Config, names not to detect): the flags; inside a run's model_dir its config.json,
  which records what shapes cannot show (ft_proj_selector, train_mode), with given flags on top."""
  values = {f.name: flag_values[f.name].value for f in Config.fields()}
  given = explicitly_set(flag_values)
  if not run_config:
    return Config.from_kwargs(**values), given
  run = Config.from_json(run_config)
  return run.replace(**{name: values[name] for name in given}), {f.name for f in Config.fields()}


def run(argv) -> int:
  """In-process entry point: parses `argv` (argv[0] = program name) and returns the exit code."""
  return cli.run(define_flags, export_checkpoint, argv)


def run_main():
  """Console script `simclr-export-saved-model`."""
  cli.run_main(define_flags, export_checkpoint)


if __name__ == '__main__':
  run_main()
