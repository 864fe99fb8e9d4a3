"""Convert SimCLR TF2 training-checkpoint values into a `SimCLRTorch` (or torchvision) state dict.

Mapping rules: docs/architecture-notes.md, "PyTorch conversion". The TF path of every torch module
is derived from the module tree of a `SimCLRTorch` built on the meta device for the given
architecture, so both sides must agree exactly: every `model/...` checkpoint variable is consumed
and every state-dict entry is filled, otherwise ValueError.

Command line: `python -m checkpoints_conversion.convert_to_pytorch`.
"""

import os
import tempfile
from typing import Dict, Iterator, Mapping, Optional, Tuple

import numpy as np
import torch

from checkpoints_conversion import torch_resnet as tr
from simclr_tf2.architecture import BLOCK_COUNTS, MODEL_PREFIX, STEM_PATH
from simclr_tf2.network import detect


def _permute_conv(t):
  return t.permute(3, 2, 0, 1)  # [kh, kw, in, out] -> [out, in, kh, kw]


def _transpose(t):
  return t.t()  # dense [in, out] -> [out, in]


def _copy(t):
  return t


# TF leaf name -> (torch leaf name, transform) for each kind of TF layer.
_BN_LEAVES = {'gamma': ('weight', _copy), 'moving_mean': ('running_mean', _copy),
              'moving_variance': ('running_var', _copy)}
_LEAVES = {
    'conv': {'kernel': ('weight', _permute_conv)},
    'conv_bias': {'kernel': ('weight', _permute_conv), 'bias': ('bias', _copy)},
    'dense': {'kernel': ('weight', _transpose)},
    'dense_bias': {'kernel': ('weight', _transpose), 'bias': ('bias', _copy)},
    'bn': {**_BN_LEAVES, 'beta': ('bias', _copy)},
    'bn_no_beta': _BN_LEAVES,  # TF center=False: torch bias is filled with zeros
}

# Stem list indices of (conv, bn) per torch conv number (docs/architecture-notes.md, "Stems").
_STEM_INDICES = {1: {1: (0, 2)}, 3: {1: (0, 1), 2: (2, 3), 3: (4, 6)}}
# Block list indices: (list name, {torch child: TF index}, SE index) per block flavour
# (docs/architecture-notes.md, "Blocks").
_RESIDUAL = ('conv2d_bn_layers', {'conv1': 0, 'bn1': 1, 'conv2': 2, 'bn2': 3}, None)
_BOTTLENECK = ('conv_relu_dropblock_layers',
               {'conv1': 0, 'bn1': 1, 'conv2': 3, 'bn2': 4, 'conv3': 6, 'bn3': 7}, 9)
_BOTTLENECK_SK = ('conv_relu_dropblock_layers', {'conv1': 0, 'bn1': 1, 'conv3': 5, 'bn3': 6}, 8)
_SK_CHILDREN = {'conv': ('conv2d_fixed_padding/conv2d', 'conv'),
                'bn': ('batch_norm_relu/bn', 'bn'),
                'attn_reduce': ('conv2d_0', 'conv'),
                'attn_bn': ('batch_norm_relu_1/bn', 'bn'),
                'attn_expand': ('conv2d_1', 'conv')}

Layout = Iterator[Tuple[str, str, str]]  # (TF path below model/, torch module path, kind)


def _kind(module) -> str:
  if isinstance(module, tr.GammaOnlyBatchNorm1d):
    return 'bn_no_beta'
  if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
    return 'bn'
  base = 'conv' if isinstance(module, torch.nn.Conv2d) else 'dense'
  return base + ('_bias' if module.bias is not None else '')


def _block_layout(block, tf_block: str, torch_block: str) -> Layout:
  if isinstance(block, tr.ResidualBlock):
    list_name, children, se_index = _RESIDUAL
    se_path, shortcut_list = 'se_layer', 'shortcut_layers'
  else:
    sk = isinstance(block.conv2, tr.SKConv2d)
    list_name, children, se_index = _BOTTLENECK_SK if sk else _BOTTLENECK
    se_path, shortcut_list = f'{list_name}/{se_index}', 'projection_layers'
    if sk:
      for child, (tf_path, kind) in _SK_CHILDREN.items():
        yield f'{tf_block}{list_name}/3/{tf_path}', f'{torch_block}conv2.{child}', kind
  for child, index in children.items():
    module = getattr(block, child)
    suffix = 'bn' if 'bn' in child else 'conv2d'
    yield f'{tf_block}{list_name}/{index}/{suffix}', f'{torch_block}{child}', _kind(module)
  if block.se is not None:
    for child in ('reduce', 'expand'):
      yield f'{tf_block}{se_path}/se_{child}', f'{torch_block}se.{child}', 'conv_bias'
  shortcut = block.shortcut
  if not isinstance(shortcut, torch.nn.Identity):
    # ResNet-D lists start with FixedPadding (stride 2 only) and the average pool.
    first = 0 if isinstance(shortcut, tr.ConvShortcut) else (1 if shortcut.stride == 1 else 2)
    yield f'{tf_block}{shortcut_list}/{first}/conv2d', f'{torch_block}shortcut.conv', 'conv'
    yield f'{tf_block}{shortcut_list}/{first + 1}/bn', f'{torch_block}shortcut.bn', 'bn'


def _layout(model: tr.SimCLRTorch) -> Layout:
  """Every (TF layer path, torch module path, kind) of the model."""
  for n, (conv_i, bn_i) in _STEM_INDICES[model.stem.num_convs].items():
    yield f'{STEM_PATH}{conv_i}/conv2d', f'stem.conv{n}', 'conv'
    yield f'{STEM_PATH}{bn_i}/bn', f'stem.bn{n}', 'bn'
  for g in range(1, 5):
    for b, block in enumerate(getattr(model, f'layer{g}')):
      yield from _block_layout(block, f'resnet_model/block_groups/{g - 1}/layers/{b}/',
                               f'layer{g}.{b}.')
  for j, layer in enumerate(model.proj_head.layers):
    tf_layer = f'_projection_head/linear_layers/{j}'
    yield f'{tf_layer}/dense', f'proj_head.layers.{j}.linear', 'dense'
    yield f'{tf_layer}/bn_relu/bn', f'proj_head.layers.{j}.bn', _kind(layer.bn)
  if model.supervised_head is not None:
    yield 'supervised_head/linear_layer/dense', 'supervised_head', 'dense_bias'


def build_meta_model(arch: Mapping) -> tr.SimCLRTorch:
  """The architecture without allocating weights (cheap even for ResNet-200 x4)."""
  with torch.device('meta'):
    return tr.SimCLRTorch(**arch)


def tf_variable_shapes(arch: Mapping) -> Dict[str, Tuple[int, ...]]:
  """Checkpoint keys (`model/...`, without suffix) and TF shapes the architecture expects."""
  model = build_meta_model(arch)
  shapes = {}
  for tf_path, torch_path, kind in _layout(model):
    module = model.get_submodule(torch_path)
    for tf_leaf, (torch_leaf, _) in _LEAVES[kind].items():
      shape = tuple(getattr(module, torch_leaf).shape)
      if tf_leaf == 'kernel':
        shape = shape[2:] + shape[1::-1] if len(shape) == 4 else shape[::-1]
      shapes[f'{MODEL_PREFIX}{tf_path}/{tf_leaf}'] = shape
  return shapes


def _format_problems(title: str, items) -> str:
  items = sorted(items)
  shown = '\n  '.join(items[:20])
  more = f'\n  ... and {len(items) - 20} more' if len(items) > 20 else ''
  return f'{title} ({len(items)}):\n  {shown}{more}'


def checkpoint_to_state_dict(tf_values: Mapping[str, np.ndarray],
                             arch: Optional[Mapping] = None) -> Dict[str, torch.Tensor]:
  """SimCLRTorch state dict from training-checkpoint values.

  tf_values: `{checkpoint key: array}` (`model/...`, with or without
    `/.ATTRIBUTES/VARIABLE_VALUE`); optimizer slots and non-model entries are ignored.
  arch: SimCLRTorch keyword arguments; detected from the shapes when None.
  """
  variables = detect.model_variables(tf_values)
  if arch is None:
    arch = detect.detect_architecture({k: np.shape(v) for k, v in tf_values.items()})
  model = build_meta_model(arch)

  remaining = dict(variables)
  missing, state = [], {}
  for tf_path, torch_path, kind in _layout(model):
    for tf_leaf, (torch_leaf, transform) in _LEAVES[kind].items():
      value = remaining.pop(f'{tf_path}/{tf_leaf}', None)
      if value is None:
        missing.append(f'{MODEL_PREFIX}{tf_path}/{tf_leaf}')
        continue
      state[f'{torch_path}.{torch_leaf}'] = transform(torch.tensor(np.asarray(value))).contiguous()
    if kind.startswith('bn'):
      if kind == 'bn_no_beta':
        state[f'{torch_path}.bias'] = torch.zeros(model.get_submodule(torch_path).num_features)
      state[f'{torch_path}.num_batches_tracked'] = torch.tensor(0, dtype=torch.long)

  problems = []
  if missing:
    problems.append(_format_problems('missing checkpoint variables', missing))
  if remaining:
    problems.append(_format_problems('unexpected checkpoint variables',
                                     [MODEL_PREFIX + k for k in remaining]))
  if not problems:
    expected = model.state_dict()
    unfilled = expected.keys() - state.keys()
    extra = state.keys() - expected.keys()
    bad_shapes = [f'{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}'
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    for title, items in (('unfilled state-dict entries', unfilled),
                         ('state-dict entries the model does not have', extra),
                         ('shape mismatches', bad_shapes)):
      if items:
        problems.append(_format_problems(title, items))
  if problems:
    raise ValueError(f'checkpoint does not match architecture {dict(arch)}:\n'
                     + '\n'.join(problems))
  return state


# --- torchvision layout ---------------------------------------------------------------------------

TORCHVISION_DEPTHS = (50, 101, 152)


def to_torchvision_resnet_state_dict(state_dict: Mapping[str, torch.Tensor],
                                     include_fc: bool = True) -> Dict[str, torch.Tensor]:
  """Rename a plain SimCLRTorch state dict to torchvision `resnet50/101/152` keys.

  Only plain models map losslessly onto torchvision parameters: ImageNet 7x7 stem, no SK/ResNet-D,
  no SE, width 1, bottleneck blocks. (ResNet-18/34 are refused: SimCLR gives layer1.0 a 1x1
  projection shortcut, torchvision's BasicBlock layer1.0 has none.) The projection head is dropped;
  the supervised head becomes `fc` when present and `include_fc`. Note torchvision's stem max pool
  uses symmetric padding, unlike TF SAME, so features differ slightly (see README).
  """
  def refuse(reason):
    raise ValueError(f'cannot express this model in torchvision ResNet layout: {reason}')

  stem = state_dict.get('stem.conv1.weight')
  if stem is None:
    refuse('no stem.conv1.weight (not a SimCLRTorch state dict)')
  if 'stem.conv2.weight' in state_dict or any('.conv2.attn_' in k for k in state_dict):
    refuse('sk_ratio > 0 (ResNet-D stem/shortcuts, selective kernels)')
  if any('.se.' in k for k in state_dict):
    refuse('se_ratio > 0 (squeeze-excitation layers)')
  if tuple(stem.shape) != (64, 3, 7, 7):
    refuse(f'stem conv has shape {tuple(stem.shape)}, expected (64, 3, 7, 7) '
           '(CIFAR stem or width multiplier > 1)')
  if 'layer1.0.conv3.weight' not in state_dict:
    refuse('basic-block ResNet-18/34: SimCLR has a projection shortcut in layer1.0, '
           'torchvision does not')
  blocks = tuple(len({k.split('.')[1] for k in state_dict if k.startswith(f'layer{g}.')})
                 for g in range(1, 5))
  depths = [d for d in TORCHVISION_DEPTHS if BLOCK_COUNTS[d] == blocks]
  if not depths:
    refuse(f'blocks per group {blocks} match no torchvision bottleneck ResNet')

  out = {}
  for key, value in state_dict.items():
    if key.startswith('proj_head.') or (key.startswith('supervised_head.') and not include_fc):
      continue
    key = key.replace('.shortcut.conv.', '.downsample.0.').replace('.shortcut.bn.', '.downsample.1.')
    for old, new in (('stem.', ''), ('supervised_head.', 'fc.')):
      if key.startswith(old):
        key = new + key[len(old):]
    out[key] = value
  return out


# --- writing --------------------------------------------------------------------------------------

SAVE_FORMATS = ('.pth', '.safetensors')


def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: str) -> None:
  """Write `.pth` (torch.save) or `.safetensors` atomically (temp file in the same dir + rename)."""
  extension = os.path.splitext(path)[1]
  if extension not in SAVE_FORMATS:
    raise ValueError(f'output must end with one of {SAVE_FORMATS}, got {path!r}')
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp_path = tempfile.mkstemp(prefix='.tmp-', suffix=extension, dir=directory)
  os.close(fd)
  umask = os.umask(0)
  os.umask(umask)
  try:
    if extension == '.pth':
      torch.save(dict(state_dict), tmp_path)
    else:
      from safetensors.torch import save_file  # optional dependency, only for this format
      save_file({k: v.contiguous() for k, v in state_dict.items()}, tmp_path)
    # After writing: mkstemp creates 0600 and safetensors writes a new 0600 file of its own;
    # give the permissions any new file gets (readable by others under the usual umask).
    os.chmod(tmp_path, 0o666 & ~umask)
    os.replace(tmp_path, path)
  except BaseException:
    os.remove(tmp_path)
    raise
