"""Export a SimCLR TF2 training checkpoint as a SavedModel.

Layout of the export: docs/architecture-notes.md, "SavedModel layout".

  python -m checkpoints_conversion.export_saved_model --checkpoint=MODEL_DIR_OR_PREFIX \
      --export_dir=DIR [--resnet_depth=50 ... | --flagfile=run_flags.cfg]

Architecture flags that are not given are detected from the checkpoint's variable shapes; given
flags win (a contradiction is reported, not silently fixed). Without an explicit --train_mode the
model is built in pretrain mode with a supervised head exactly when the checkpoint has one; pass
--train_mode=finetune (or the run's --flagfile) to export fine-tuning trainability. Shapes cannot
reveal --ft_proj_selector values other than 0 and -1: give it for such heads. The restore is
strict and nothing is written on any error.
"""

import time

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
  from simclr_tf2.inference.loading import DETECTED_FLAGS, config_for_checkpoint
  from simclr_tf2.network.model import build_model
  start = time.monotonic()
  if not flag_values.export_dir:
    raise ValueError('--export_dir is required')
  console.print_header(f'simclr-export-saved-model: {flag_values.checkpoint} -> SavedModel',
                       console.device_names(), flag_values.export_dir)
  prefix = resolve_checkpoint(flag_values.checkpoint)
  values = {f.name: flag_values[f.name].value for f in Config.fields()}
  config, num_classes = config_for_checkpoint(read_shapes(prefix), Config.from_kwargs(**values),
                                              explicitly_set(flag_values))
  model = build_model(num_classes, config).create_variables()
  _, global_step = restore_for_evaluation(model, prefix)
  path = export_saved_model(model, flag_values.export_dir)
  console.print_summary(
      {'step': global_step, **{name: getattr(config, name) for name in DETECTED_FLAGS},
       'classes': num_classes},
      {'checkpoint': prefix, 'saved_model': path}, seconds=time.monotonic() - start)
  return path


def run(argv) -> int:
  """In-process entry point: parses `argv` (argv[0] = program name) and returns the exit code."""
  return cli.run(define_flags, export_checkpoint, argv)


def run_main():
  """Console script `simclr-export-saved-model`."""
  cli.run_main(define_flags, export_checkpoint)


if __name__ == '__main__':
  run_main()
