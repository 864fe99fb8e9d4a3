"""Convert a SimCLR TF2 training checkpoint or SavedModel into a PyTorch state dict.

Mapping and padding rules: docs/architecture-notes.md, "PyTorch conversion".
Kn: defect numbers of the official code, listed in docs/differences.md.

  python -m checkpoints_conversion.convert_to_pytorch \
      (--checkpoint=MODEL_DIR_PREFIX_OR_SAVED_MODEL | --saved_model=EXPORT_DIR) \
      --output=FILE.pth|.safetensors [--torchvision] [--ft_proj_selector=N]

The architecture is detected from the variable shapes, except the supervised head's input
(--ft_proj_selector), which shapes may not decide: it comes from the flag, else the run's
config.json (a model_dir, or a checkpoint or export inside one). The result loads into
`checkpoints_conversion.torch_resnet.SimCLRTorch(**architecture)` (printed on success), or with
--torchvision into torchvision's resnet50/101/152 (plain ResNets only). SavedModels exported by
this project and the official pre-converted TF2 SavedModels are both accepted (K32). Nothing is
written on any error.
"""

import os
import time
from typing import Dict

from absl import flags
import numpy as np

from checkpoints_conversion import cli
from simclr_tf2 import console
from simclr_tf2.network.detect import detect_architecture


def define_flags(flag_values):
  flags.DEFINE_string('checkpoint', None, 'Training checkpoint prefix, directory (newest) or '
                      'SavedModel directory.', flag_values=flag_values)
  flags.DEFINE_string('saved_model', None, 'SavedModel directory (this project or official TF2); '
                      'same as --checkpoint.', flag_values=flag_values)
  flags.DEFINE_string('output', None, 'File to write: .pth (torch.save) or .safetensors.',
                      flag_values=flag_values)
  flags.DEFINE_integer('ft_proj_selector', None, 'Input of the supervised head when the shapes '
                       'cannot tell (0: encoder, 1: first projection layer, ...); default: the '
                       'run\'s config.json when the source is in a model_dir, else 0 with a '
                       'warning.', flag_values=flag_values)
  flags.DEFINE_bool('torchvision', False, 'Write torchvision resnet50/101/152 keys (plain ResNet '
                    'only; the projection head is dropped, a supervised head becomes `fc`).',
                    flag_values=flag_values)


def read_values(checkpoint: str = None, saved_model: str = None) -> Dict[str, np.ndarray]:
  """Model variable values keyed like a training checkpoint, from exactly one of the sources."""
  # pylint: disable=import-outside-toplevel  (TensorFlow loads after the console is quiet)
  from simclr_tf2.network.checkpoint import read_model_values, resolve_checkpoint
  from simclr_tf2.network.export import read_saved_model_variables
  if bool(checkpoint) == bool(saved_model):
    raise ValueError('give exactly one of --checkpoint and --saved_model')
  if saved_model:
    return read_saved_model_variables(saved_model)
  return read_model_values(resolve_checkpoint(checkpoint))


def head_input(given, source: str, shapes) -> int:
  """ft_proj_selector: the flag, else the run's config.json, else what the shapes (and for a
  SavedModel its own outputs) allow, with a warning when nothing decides
  (inference.loading.config_for_checkpoint)."""
  # pylint: disable=import-outside-toplevel
  from simclr_tf2.config import Config
  from simclr_tf2.inference.loading import config_for_checkpoint, run_config_path
  from simclr_tf2.network.checkpoint import resolve_checkpoint
  if given is not None:
    return given
  run_config = run_config_path(source)
  if run_config:
    return Config.from_json(run_config).ft_proj_selector
  config, _ = config_for_checkpoint(shapes, Config(), (), resolve_checkpoint(source))
  return config.ft_proj_selector


def torch_conversion():
  """The tf_to_torch module, or a one-line ImportError naming the extra that installs PyTorch."""
  try:
    from checkpoints_conversion import tf_to_torch  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ImportError(f'conversion to PyTorch needs PyTorch and safetensors ({error}): '
                      'pip install torch safetensors (the [torch] extra of simclr_tf2)') from None
  return tf_to_torch


def convert(flag_values) -> Dict:
  """Reads, converts and writes; returns the detected architecture."""
  start = time.monotonic()
  tf_to_torch = torch_conversion()
  output = flag_values.output
  if not output or os.path.splitext(output)[1] not in tf_to_torch.SAVE_FORMATS:
    raise ValueError(f'--output must end with one of {", ".join(tf_to_torch.SAVE_FORMATS)}, '
                     f'got {output!r}')
  source = flag_values.checkpoint or flag_values.saved_model
  console.print_header(f'simclr-convert-to-pytorch: {source} -> PyTorch', 'CPU', output)
  values = read_values(flag_values.checkpoint, flag_values.saved_model)
  architecture = detect_architecture({key: value.shape for key, value in values.items()})
  architecture['ft_proj_selector'] = head_input(
      flag_values.ft_proj_selector, source, {key: value.shape for key, value in values.items()})
  state_dict = tf_to_torch.checkpoint_to_state_dict(values, architecture)
  if flag_values.torchvision:
    state_dict = tf_to_torch.to_torchvision_resnet_state_dict(state_dict)
  tf_to_torch.save_state_dict(state_dict, output)
  print(f'architecture: {architecture}')  # SimCLRTorch(**architecture) loads the output
  console.print_summary({'tensors': len(state_dict)}, {'output': output},
                        seconds=time.monotonic() - start)
  return architecture


def run(argv) -> int:
  """In-process entry point: parses `argv` (argv[0] = program name) and returns the exit code."""
  return cli.run(define_flags, convert, argv)


def run_main():
  """Console script `simclr-convert-to-pytorch`."""
  cli.run_main(define_flags, convert)


if __name__ == '__main__':
  run_main()
