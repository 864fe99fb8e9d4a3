"""Recover the architecture flags of a SimCLR TF2 training checkpoint from its keys and shapes.

Works on `{key: shape}` maps as returned by `tf.train.list_variables` (training-checkpoint keys,
with or without the `/.ATTRIBUTES/VARIABLE_VALUE` suffix). No TensorFlow or torch needed.
The returned dict holds keyword arguments of `torch_resnet.SimCLRTorch` (= official flag names).
"""

import math
import re
from typing import Dict, Mapping, Sequence, Tuple

from simclr_tf2.architecture import (BLOCK_COUNTS, BOTTLENECK_MIN_DEPTH, MODEL_PREFIX,
                                     CIFAR_MAX_IMAGE_SIZE, SK_MIN_DIM, SLOT_MARKER, STEM_PATH,
                                     VALUE_SUFFIX)

PAPER_SK_RATIO = 0.0625  # reported when the SK width sits at its minimum and hides the ratio

_GROUPS = 'resnet_model/block_groups/'
_PROJ = '_projection_head/linear_layers/'
_SUP_KERNEL = 'supervised_head/linear_layer/dense/kernel'


def model_variables(entries: Mapping[str, object]) -> Dict[str, object]:
  """Model variables keyed by their path below `model/` (suffix stripped).

  Optimizer slots, `optimizer/...`, `global_step`, `save_counter` and the object graph live outside
  the `model/` subtree or under `.OPTIMIZER_SLOT`, so they are dropped here.
  """
  out = {}
  for key, value in entries.items():
    if SLOT_MARKER in key or not key.startswith(MODEL_PREFIX):
      continue
    if key.endswith(VALUE_SUFFIX):
      key = key[:-len(VALUE_SUFFIX)]
    out[key[len(MODEL_PREFIX):]] = value
  return out


def _block_prefix(g: int, b: int) -> str:
  return f'{_GROUPS}{g}/layers/{b}/'


def _count_blocks(shapes, g: int) -> int:
  pattern = re.compile(re.escape(_GROUPS) + rf'{g}/layers/(\d+)/')
  indices = {int(m.group(1)) for k in shapes for m in [pattern.match(k)] if m}
  if indices != set(range(len(indices))):
    raise ValueError(f'block group {g} has non-contiguous block indices {sorted(indices)}')
  return len(indices)


def _ratio_from_width(width: int, filters: int) -> float:
  """Smallest-looking ratio r with int(filters * r) == width (floor in the reference)."""
  ratio = width / filters
  while int(filters * ratio) < width:  # guard against float rounding just below the integer
    ratio = math.nextafter(ratio, math.inf)
  return ratio


def detect_architecture(shapes: Mapping[str, Sequence[int]]) -> dict:
  """Return SimCLRTorch keyword arguments for a checkpoint's `{key: shape}` map.

  Raises ValueError when the keys do not form a SimCLR TF2 model.
  """
  shapes = {k: tuple(int(d) for d in v) for k, v in model_variables(shapes).items()}
  stem_kernel = shapes.get(STEM_PATH + '0/conv2d/kernel')
  if stem_kernel is None:
    raise ValueError(
        'not a SimCLR TF2 training checkpoint: no key '
        f"'{MODEL_PREFIX}{STEM_PATH}0/conv2d/kernel{VALUE_SUFFIX}' ({len(shapes)} model/ keys found)")

  # Stem: ResNet-D deep stem has a second conv at index 2; otherwise 3x3 = CIFAR, 7x7 = ImageNet.
  deep_stem = STEM_PATH + '2/conv2d/kernel' in shapes
  cifar_stem = not deep_stem and stem_kernel[0] == 3
  stem_out = shapes[STEM_PATH + '4/conv2d/kernel'][3] if deep_stem else stem_kernel[3]
  if stem_out % 64:
    raise ValueError(f'stem width {stem_out} is not a multiple of 64')
  width = stem_out // 64

  first = _block_prefix(0, 0)
  if first + 'conv_relu_dropblock_layers/0/conv2d/kernel' in shapes:
    bottleneck, shortcut_list, se_parent = True, 'projection_layers', None
  elif first + 'conv2d_bn_layers/0/conv2d/kernel' in shapes:
    bottleneck, shortcut_list, se_parent = False, 'shortcut_layers', 'se_layer'
  else:
    raise ValueError('not a SimCLR TF2 checkpoint: first block has neither bottleneck nor '
                     'residual layers')
  counts = tuple(_count_blocks(shapes, g) for g in range(4))
  depths = [d for d, c in BLOCK_COUNTS.items()
            if c == counts and (d >= BOTTLENECK_MIN_DEPTH) == bottleneck]
  if not depths:
    raise ValueError(f'unknown ResNet: blocks per group {counts}, bottleneck={bottleneck}')
  depth = depths[0]

  # Selective kernels / ResNet-D: deep stem, avg-pool shortcut (conv at index 1) or SK convs.
  sk_widths = [(shape[2], shape[3]) for k, shape in shapes.items()
               if k.endswith('/conv_relu_dropblock_layers/3/conv2d_0/kernel')]
  resnet_d = deep_stem or f'{first}{shortcut_list}/1/conv2d/kernel' in shapes or bool(sk_widths)
  sk_ratio = 0.
  if resnet_d:
    filters, mid = max(sk_widths, default=(0, SK_MIN_DIM))
    sk_ratio = _ratio_from_width(mid, filters) if mid > SK_MIN_DIM else PAPER_SK_RATIO

  # SE: reduce width = max(1, int(filters * se_ratio)); use the widest group for precision.
  last_filters = 512 * width
  if se_parent is None:
    se_parent = f'conv_relu_dropblock_layers/{8 if sk_widths else 9}'
  se_kernel = shapes.get(f'{_block_prefix(3, 0)}{se_parent}/se_reduce/kernel')
  se_ratio = _ratio_from_width(se_kernel[3], last_filters) if se_kernel else 0.

  encoder_width = last_filters * (4 if bottleneck else 1)
  proj_kernels = []
  while f'{_PROJ}{len(proj_kernels)}/dense/kernel' in shapes:
    proj_kernels.append(shapes[f'{_PROJ}{len(proj_kernels)}/dense/kernel'])
  arch = {
      'resnet_depth': depth,
      'width_multiplier': width,
      'sk_ratio': sk_ratio,
      'se_ratio': se_ratio,
      'cifar_stem': cifar_stem,
      'image_size': CIFAR_MAX_IMAGE_SIZE if cifar_stem else 224,
      # `linear` and a 1-layer `nonlinear` head have identical keys and forward pass.
      'proj_head_mode': 'nonlinear' if proj_kernels else 'none',
      'num_proj_layers': len(proj_kernels),
      'proj_out_dim': proj_kernels[-1][1] if proj_kernels else 128,
      'ft_proj_selector': 0,
      'num_classes': None,
  }
  sup_kernel = shapes.get(_SUP_KERNEL)
  if sup_kernel is not None:
    arch['num_classes'] = sup_kernel[1]
    candidates = _selector_candidates(encoder_width, proj_kernels, sup_kernel[0])
    # Ambiguous: the official default 0 when it fits (the caller reports the ambiguity).
    arch['ft_proj_selector'] = 0 if 0 in candidates else candidates[0]
  return arch


def _selector_candidates(encoder_width, proj_kernels, head_width) -> Tuple[int, ...]:
  """Every ft_proj_selector whose hidden layer has the supervised head's input width.

  hiddens = [encoder output, projection layer 1, ..., layer K]; the output is written -1, as
  the official flag does. No fit gives (-1,): the strict restore then reports the head.
  """
  widths = [encoder_width] + [kernel[1] for kernel in proj_kernels]
  last = len(widths) - 1
  fits = [-1 if i == last and i else i for i, width in enumerate(widths) if width == head_width]
  return tuple(fits) or (-1,)


def ft_proj_selector_candidates(shapes: Mapping[str, Sequence[int]]) -> Tuple[int, ...]:
  """The ft_proj_selector values a checkpoint's shapes allow; () without a supervised head.

  Hidden projection layers are as wide as the encoder output, so a head fed from the encoder
  (0) and one fed from the first projection layer (1, the SimCLRv2 fine-tuning setting) have
  the same shapes: more than one value means the shapes cannot decide.
  """
  arch = detect_architecture(shapes)
  variables = {k: tuple(int(d) for d in v) for k, v in model_variables(shapes).items()}
  sup_kernel = variables.get(_SUP_KERNEL)
  if sup_kernel is None:
    return ()
  proj_kernels = []
  while f'{_PROJ}{len(proj_kernels)}/dense/kernel' in variables:
    proj_kernels.append(variables[f'{_PROJ}{len(proj_kernels)}/dense/kernel'])
  encoder_width = 512 * arch['width_multiplier'] * (
      4 if arch['resnet_depth'] >= BOTTLENECK_MIN_DEPTH else 1)
  return _selector_candidates(encoder_width, proj_kernels, sup_kernel[0])
