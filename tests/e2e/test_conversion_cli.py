"""The conversion CLIs: PyTorch weights that reproduce the TF endpoints, architecture detection,
SavedModel export from a checkpoint, and one-line errors that write nothing.

Conversion rules: docs/architecture-notes.md, "PyTorch conversion".
"""

import ast
import os

import pytest
import tensorflow as tf

torch = pytest.importorskip('torch')

from commands import run_cli
from checkpoints_conversion import convert_to_pytorch  # noqa: E402
from checkpoints_conversion import export_saved_model as export_cli  # noqa: E402
from checkpoints_conversion.tf_to_torch import checkpoint_to_state_dict  # noqa: E402
from checkpoints_conversion.torch_resnet import SimCLRTorch  # noqa: E402
from golden_data import GOLDEN_CONFIGS, NUM_CLASSES, REFERENCE_PARITY, cases  # noqa: E402
from simclr_tf2.network.export import loaded_model_variables  # noqa: E402
from simclr_tf2.network.model import build_model  # noqa: E402
from export_cases import (EXPORTED_CASES, TF_TOLERANCE, assert_endpoints_close,  # noqa: E402
                         build_case, exported_case, images, loaded_case, randomize_batch_norm)

TORCH_TOLERANCE = 1e-4  # relative to each endpoint's largest magnitude
PLAIN_R50 = 'r50_imagenet_pretrain_lars'
# Exported golden cases plus SE without SK in bottleneck blocks (checkpoint conversion only).
R50_SE = 'r50_se'
CONVERSION_FLAGS = {**{name: GOLDEN_CONFIGS[name] for name in EXPORTED_CASES},
                    R50_SE: dict(resnet_depth=50, image_size=64, se_ratio=0.25)}


def _tf_model(name):
  if name in EXPORTED_CASES:
    return exported_case(name)[0]
  if name in GOLDEN_CONFIGS:
    return build_case(name)
  model = build_model(NUM_CLASSES, **CONVERSION_FLAGS[name], **REFERENCE_PARITY)
  randomize_batch_norm(model.create_variables())
  return model


def expected_architecture(flags):
  """SimCLRTorch arguments for a configuration, written out from the flags (not detected)."""
  cifar = flags['image_size'] <= 32
  return dict(resnet_depth=flags['resnet_depth'], width_multiplier=1,
              sk_ratio=flags.get('sk_ratio', 0.), se_ratio=flags.get('se_ratio', 0.),
              cifar_stem=cifar, image_size=32 if cifar else 224, proj_head_mode='nonlinear',
              num_proj_layers=3, proj_out_dim=128, ft_proj_selector=0, num_classes=NUM_CLASSES)


def _write_checkpoint(model, directory, step=0):
  global_step = tf.Variable(step, dtype=tf.int64)
  return tf.train.Checkpoint(model=model, global_step=global_step).write(
      os.path.join(str(directory), f'ckpt-{step}'))


def _printed_architecture(stdout):
  line = next(l for l in stdout.splitlines() if l.startswith('architecture: '))
  return ast.literal_eval(line[len('architecture: '):])


def _load_output(path):
  if path.endswith('.safetensors'):
    from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
    return load_file(path)
  return torch.load(path, weights_only=True)


def assert_torch_matches_tf(model, state_dict, flags):
  torch_model = SimCLRTorch(**expected_architecture(flags))
  torch_model.load_state_dict(state_dict)  # strict: same keys and shapes
  size = flags['image_size']
  for height in (size, size + 1):  # odd sizes change TF SAME padding
    x = images(height)
    expected = model.call_with_endpoints(x, training=False)
    with torch.no_grad():
      outputs = torch_model(torch.from_numpy(x.numpy()).permute(0, 3, 1, 2))
    actual = {k: (v.permute(0, 2, 3, 1) if v.dim() == 4 else v).numpy()
              for k, v in outputs.items()}
    assert_endpoints_close(actual, expected, TORCH_TOLERANCE)


# The commands are architecture-blind past detection (tested below for every golden
# configuration), and tests/unit/test_tf_to_torch.py checks the numerics of R18, R18-SK-SE, R50
# and R50-SK-SE against TF ops: through the command, R18 (fast), the deepest variant and SE
# without SK, which no unit test has (slow).
CONVERTED = ('r18_cifar_pretrain_lars', 'r50_sk_se_imagenet_pretrain_lars')


@pytest.mark.parametrize('name', cases((*CONVERTED, R50_SE), fast={'r18_cifar_pretrain_lars'}))
def test_checkpoint_conversion_reproduces_tf_endpoints(name, tmp_path, capsys):
  model = _tf_model(name)
  _write_checkpoint(model, tmp_path / 'ckpt')
  output = str(tmp_path / 'weights.pth')
  code, out, err = run_cli(convert_to_pytorch, capsys, f'--checkpoint={tmp_path / "ckpt"}',
                           f'--output={output}')
  assert code == 0, err
  assert _printed_architecture(out) == expected_architecture(CONVERSION_FLAGS[name])
  assert_torch_matches_tf(model, _load_output(output), CONVERSION_FLAGS[name])


@pytest.mark.parametrize('name', cases(CONVERTED, fast={'r18_cifar_pretrain_lars'}))
def test_saved_model_conversion_reproduces_tf_endpoints(name, tmp_path, capsys):
  model, export_dir = exported_case(name)
  if GOLDEN_CONFIGS[name]['resnet_depth'] == 18:  # each CLI run reloads the SavedModel (2-6 s)
    output = str(tmp_path / 'weights.safetensors')
    code, _, err = run_cli(convert_to_pytorch, capsys, f'--saved_model={export_dir}',
                           f'--output={output}')
    assert code == 0, err
    state_dict = _load_output(output)
  else:
    state_dict = checkpoint_to_state_dict(loaded_model_variables(loaded_case(name)))
  assert_torch_matches_tf(model, state_dict, GOLDEN_CONFIGS[name])


@pytest.mark.parametrize('name', cases(sorted(GOLDEN_CONFIGS), fast={
    name for name in GOLDEN_CONFIGS if GOLDEN_CONFIGS[name]['resnet_depth'] == 18}))
def test_cli_detects_architecture_of_golden_configurations(name, tmp_path, capsys):
  _write_checkpoint(_tf_model(name), tmp_path)
  output = str(tmp_path / 'weights.safetensors')
  code, out, err = run_cli(convert_to_pytorch, capsys, f'--checkpoint={tmp_path}',
                           f'--output={output}')
  assert code == 0, err
  expected = expected_architecture(GOLDEN_CONFIGS[name])
  assert _printed_architecture(out) == expected
  SimCLRTorch(**expected).load_state_dict(_load_output(output))


def _torchvision_resnet50_shapes(num_classes):
  """torchvision.models.resnet50 state-dict keys and shapes, written out from its structure."""
  def batch_norm(prefix, channels):
    return {f'{prefix}.{leaf}': (channels,) for leaf in ('weight', 'bias', 'running_mean',
                                                          'running_var')} | {
        f'{prefix}.num_batches_tracked': ()}
  shapes = {'conv1.weight': (64, 3, 7, 7), **batch_norm('bn1', 64),
            'fc.weight': (num_classes, 2048), 'fc.bias': (num_classes,)}
  in_channels = 64
  for group, blocks in enumerate((3, 4, 6, 3)):
    width = 64 * 2 ** group
    for b in range(blocks):
      prefix = f'layer{group + 1}.{b}'
      shapes.update({f'{prefix}.conv1.weight': (width, in_channels, 1, 1),
                     f'{prefix}.conv2.weight': (width, width, 3, 3),
                     f'{prefix}.conv3.weight': (4 * width, width, 1, 1),
                     **batch_norm(f'{prefix}.bn1', width), **batch_norm(f'{prefix}.bn2', width),
                     **batch_norm(f'{prefix}.bn3', 4 * width)})
      if b == 0:
        shapes.update({f'{prefix}.downsample.0.weight': (4 * width, in_channels, 1, 1),
                       **batch_norm(f'{prefix}.downsample.1', 4 * width)})
      in_channels = 4 * width
  return shapes


def test_torchvision_layout_for_plain_resnet50(tmp_path, capsys):
  _write_checkpoint(exported_case(PLAIN_R50)[0], tmp_path)
  output = str(tmp_path / 'resnet50.pth')
  code, _, err = run_cli(convert_to_pytorch, capsys, f'--checkpoint={tmp_path}',
                         f'--output={output}', '--torchvision')
  assert code == 0, err
  shapes = {k: tuple(v.shape) for k, v in _load_output(output).items()}
  assert len(shapes) == 320  # len(torchvision.models.resnet50().state_dict())
  assert shapes == _torchvision_resnet50_shapes(NUM_CLASSES)


def test_export_cli_detects_architecture_and_restores(tmp_path, capsys):
  name = 'r18_cifar_pretrain_lars'
  model = exported_case(name)[0]
  _write_checkpoint(model, tmp_path / 'ckpt', step=42)
  export_dir = str(tmp_path / 'export')
  code, out, err = run_cli(export_cli, capsys, f'--checkpoint={tmp_path / "ckpt"}',
                           f'--export_dir={export_dir}')
  assert code == 0, err
  assert 'step 42' in out
  loaded = tf.saved_model.load(export_dir)
  x = images(32)
  assert_endpoints_close(loaded(x, trainable=False), model.call_with_endpoints(x), TF_TOLERANCE)
  assert len(loaded.trainable_variables_list) == len(model.trainable_variables)


@pytest.fixture(name='small_checkpoint')
def small_checkpoint_fixture(tmp_path_factory):
  """A valid R18-CIFAR checkpoint directory and its prefix."""
  directory = tmp_path_factory.mktemp('ckpt')
  prefix = _write_checkpoint(exported_case('r18_cifar_pretrain_lars')[0], directory)
  return directory, prefix


def _corrupt(prefix, suffix):
  """Index: garbage bytes; data: truncated to half (keys readable, values not)."""
  path = prefix + suffix
  if suffix == '.index':
    with open(path, 'wb') as f:
      f.write(b'not a checkpoint index' * 10)
  else:
    os.truncate(path, os.path.getsize(path) // 2)


def _assert_one_line_error(code, out, err):
  assert code == 1
  assert err.startswith('error: ') and err.count('\n') == 1, err
  assert 'Traceback' not in err and not out.count('\ndone')


@pytest.mark.parametrize('problem', ['missing', 'corrupt_index', 'corrupt_data', 'extension',
                                     'no_source', 'missing_saved_model'])
def test_convert_errors_write_nothing(problem, small_checkpoint, tmp_path, capsys):
  directory, prefix = small_checkpoint
  output = tmp_path / ('weights.pt' if problem == 'extension' else 'weights.pth')
  source = [f'--checkpoint={directory}']
  if problem == 'missing':
    source = [f'--checkpoint={tmp_path / "nowhere"}']
  elif problem.startswith('corrupt'):
    _corrupt(prefix, '.index' if problem == 'corrupt_index' else '.data-00000-of-00001')
  elif problem == 'no_source':
    source = []
  elif problem == 'missing_saved_model':
    source = [f'--saved_model={tmp_path}']
  _assert_one_line_error(*run_cli(convert_to_pytorch, capsys, *source, f'--output={output}'))
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('problem', ['missing', 'corrupt_index', 'corrupt_data',
                                     'explicit_flag_contradicts_checkpoint', 'explicit_no_head'])
def test_export_cli_errors_write_nothing(problem, small_checkpoint, tmp_path, capsys):
  directory, prefix = small_checkpoint
  args = [f'--checkpoint={directory}', f'--export_dir={tmp_path / "export"}']
  if problem == 'missing':
    args[0] = f'--checkpoint={tmp_path / "nowhere"}'
  elif problem.startswith('corrupt'):
    _corrupt(prefix, '.index' if problem == 'corrupt_index' else '.data-00000-of-00001')
  elif problem == 'explicit_flag_contradicts_checkpoint':
    args.append('--proj_out_dim=64')  # given flags win over detection, then fail the restore
  else:
    args.append('--lineareval_while_pretraining=false')  # the checkpoint has a supervised head
  _assert_one_line_error(*run_cli(export_cli, capsys, *args))
  assert os.listdir(tmp_path) == []
