"""PyTorch mirror of the SimCLR TF2 model (ResNet v1.5 + SK/ResNet-D/SE + heads), inference-exact.

Architecture and padding equivalences: docs/architecture-notes.md. Tensors are NCHW; inputs are RGB
in [0, 1] without mean/std normalisation. Every place where TF padding differs from PyTorch's
symmetric `padding=` argument is implemented explicitly (see the helper functions below).

State-dict naming (shared with tf_to_torch.py):
  stem.conv{1..3}, stem.bn{1..3}                 (1 conv for CIFAR/ImageNet stems, 3 for ResNet-D)
  layer{1..4}.{b}.conv1/bn1/conv2/bn2[/conv3/bn3] (bottleneck with SK: conv2 is an SKConv2d
                                                   with .conv .bn .attn_reduce .attn_bn .attn_expand,
                                                   and there is no bn2)
  layer{1..4}.0.shortcut.conv / .bn              (projection shortcut of each group's first block)
  layer{1..4}.{b}.se.reduce / .expand            (1x1 convs with bias)
  proj_head.layers.{j}.linear / .bn
  supervised_head                                 (nn.Linear with bias)
"""

from typing import Dict, List, Optional

import torch
from torch import nn
import torch.nn.functional as F

from simclr_tf2.architecture import (BLOCK_COUNTS, BLOCK_GROUP_STRIDES, BN_EPSILON,
                                     BOTTLENECK_MIN_DEPTH, CIFAR_MAX_IMAGE_SIZE, PROJ_HEAD_MODES,
                                     SK_MIN_DIM)

BN_MOMENTUM = 0.1  # PyTorch convention: 1 - TF batch_norm_decay (0.9)


# --- TF padding semantics -------------------------------------------------------------------------

def tf_same_padding(size: int, kernel: int, stride: int):
  """(before, after) padding TF's 'SAME' uses along one axis: output ceil(size/stride)."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def max_pool_tf_same(x: torch.Tensor, kernel: int = 3, stride: int = 2) -> torch.Tensor:
  """tf.nn.max_pool2d(padding='SAME'): asymmetric (0, 1) padding on even sizes.

  PyTorch's MaxPool2d(3, 2, padding=1) gives the same output size but shifted windows.
  """
  top, bottom = tf_same_padding(x.shape[-2], kernel, stride)
  left, right = tf_same_padding(x.shape[-1], kernel, stride)
  x = F.pad(x, (left, right, top, bottom), value=float('-inf'))
  return F.max_pool2d(x, kernel, stride)


def avg_pool_2x2_tf_same_stride1(x: torch.Tensor) -> torch.Tensor:
  """2x2/1 average pool with TF 'SAME' padding (0 before, 1 after).

  TF divides by the number of *real* cells in each window, so the last row/column average fewer
  values; reproduced by dividing the zero-padded window sum by a per-position count.
  """
  padded = F.pad(x, (0, 1, 0, 1))
  count = F.pad(torch.ones_like(x[:1, :1]), (0, 1, 0, 1))
  return F.avg_pool2d(padded, 2, 1) / F.avg_pool2d(count, 2, 1)


def avg_pool_2x2_fixed_padding_stride2(x: torch.Tensor) -> torch.Tensor:
  """FixedPadding(2) (zeros, 0 before / 1 after) then 2x2/2 VALID average: padded zeros count."""
  return F.avg_pool2d(F.pad(x, (0, 1, 0, 1)), 2, 2)


def conv2d_fixed_padding(in_channels: int, out_channels: int, kernel_size: int,
                         stride: int = 1) -> nn.Conv2d:
  """Conv2dFixedPadding: stride 1 = TF SAME, stride > 1 = pad (k-1)//2 before, rest after + VALID.

  All kernels in the model are odd, where both rules reduce to symmetric padding k // 2.
  """
  if kernel_size % 2 != 1:
    raise ValueError(f'only odd kernel sizes are used by the model, got {kernel_size}')
  return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2,
                   bias=False)


def batch_norm(channels: int, dims: int = 2) -> nn.Module:
  cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
  return cls(channels, eps=BN_EPSILON, momentum=BN_MOMENTUM)


class GammaOnlyBatchNorm1d(nn.BatchNorm1d):
  """BN with scale but no learnable shift (TF `center=False`): `bias` is a zero buffer.

  Keeping the `bias` key (instead of affine=False) lets the state dict stay uniform; as a buffer it
  is never trained.
  """

  def __init__(self, channels: int):
    super().__init__(channels, eps=BN_EPSILON, momentum=BN_MOMENTUM)
    del self.bias
    self.register_buffer('bias', torch.zeros(channels))


# --- encoder building blocks ----------------------------------------------------------------------

class ResNetDShortcut(nn.Module):
  """ResNet-D projection shortcut: 2x2 average pool (stride s), then 1x1 conv + BN."""

  def __init__(self, in_channels: int, out_channels: int, stride: int):
    super().__init__()
    self.stride = stride
    self.conv = conv2d_fixed_padding(in_channels, out_channels, 1)
    self.bn = batch_norm(out_channels)

  def forward(self, x):
    if self.stride == 1:
      x = avg_pool_2x2_tf_same_stride1(x)
    else:
      x = avg_pool_2x2_fixed_padding_stride2(x)
    return self.bn(self.conv(x))


class ConvShortcut(nn.Module):
  """Plain projection shortcut: strided 1x1 conv + BN."""

  def __init__(self, in_channels: int, out_channels: int, stride: int):
    super().__init__()
    self.conv = conv2d_fixed_padding(in_channels, out_channels, 1, stride)
    self.bn = batch_norm(out_channels)

  def forward(self, x):
    return self.bn(self.conv(x))


def make_shortcut(in_channels, out_channels, stride, use_projection, resnet_d):
  if not use_projection:
    return nn.Identity()
  cls = ResNetDShortcut if resnet_d else ConvShortcut
  return cls(in_channels, out_channels, stride)


class SqueezeExcitation(nn.Module):
  """SE layer: bottleneck width from `filters` (not the input channels), expands back to them."""

  def __init__(self, channels: int, filters: int, se_ratio: float):
    super().__init__()
    reduced = max(1, int(filters * se_ratio))
    self.reduce = nn.Conv2d(channels, reduced, 1)
    self.expand = nn.Conv2d(reduced, channels, 1)

  def forward(self, x):
    s = x.mean(dim=(2, 3), keepdim=True)
    return torch.sigmoid(self.expand(F.relu(self.reduce(s)))) * x


class SKConv2d(nn.Module):
  """Selective-kernel conv: one 3x3 conv producing 2 streams, mixed by a per-channel softmax."""

  def __init__(self, in_channels: int, filters: int, stride: int, sk_ratio: float):
    super().__init__()
    mid = max(int(filters * sk_ratio), SK_MIN_DIM)
    self.conv = conv2d_fixed_padding(in_channels, 2 * filters, 3, stride)
    self.bn = batch_norm(2 * filters)
    self.attn_reduce = nn.Conv2d(filters, mid, 1, bias=False)
    self.attn_bn = batch_norm(mid)
    self.attn_expand = nn.Conv2d(mid, 2 * filters, 1, bias=False)

  def forward(self, x):
    streams = torch.stack(F.relu(self.bn(self.conv(x))).chunk(2, dim=1))  # stream 0 = first half
    g = streams.sum(dim=0).mean(dim=(2, 3), keepdim=True)
    logits = self.attn_expand(F.relu(self.attn_bn(self.attn_reduce(g))))
    weights = torch.softmax(torch.stack(logits.chunk(2, dim=1)), dim=0)
    return (streams * weights).sum(dim=0)


class ResidualBlock(nn.Module):
  """Basic block (depth 18/34); never uses SK convs, ResNet-D only changes the shortcut."""
  expansion = 1

  def __init__(self, in_channels, filters, stride, use_projection, sk_ratio, se_ratio):
    super().__init__()
    self.conv1 = conv2d_fixed_padding(in_channels, filters, 3, stride)
    self.bn1 = batch_norm(filters)
    self.conv2 = conv2d_fixed_padding(filters, filters, 3)
    self.bn2 = batch_norm(filters)
    self.se = SqueezeExcitation(filters, filters, se_ratio) if se_ratio > 0 else None
    self.shortcut = make_shortcut(in_channels, filters, stride, use_projection, sk_ratio > 0)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    if self.se is not None:
      out = self.se(out)
    return F.relu(out + self.shortcut(x))


class BottleneckBlock(nn.Module):
  """v1.5 bottleneck (stride on the 3x3); with sk_ratio > 0 the 3x3 conv + BN is an SKConv2d."""
  expansion = 4

  def __init__(self, in_channels, filters, stride, use_projection, sk_ratio, se_ratio):
    super().__init__()
    out_channels = 4 * filters
    self.conv1 = conv2d_fixed_padding(in_channels, filters, 1)
    self.bn1 = batch_norm(filters)
    if sk_ratio > 0:
      self.conv2 = SKConv2d(filters, filters, stride, sk_ratio)
      self.bn2 = None  # SKConv2d has its own BN-ReLU before mixing, none after
    else:
      self.conv2 = conv2d_fixed_padding(filters, filters, 3, stride)
      self.bn2 = batch_norm(filters)
    self.conv3 = conv2d_fixed_padding(filters, out_channels, 1)
    self.bn3 = batch_norm(out_channels)
    self.se = SqueezeExcitation(out_channels, filters, se_ratio) if se_ratio > 0 else None
    self.shortcut = make_shortcut(in_channels, out_channels, stride, use_projection, sk_ratio > 0)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.conv2(out)
    if self.bn2 is not None:
      out = F.relu(self.bn2(out))
    out = self.bn3(self.conv3(out))
    if self.se is not None:
      out = self.se(out)
    return F.relu(out + self.shortcut(x))


class Stem(nn.Module):
  """CIFAR (3x3/1, no pool), ImageNet (7x7/2 + max pool) or ResNet-D deep stem (3 convs + pool).

  Returns (initial_conv, initial_max_pool): the last conv's output before BN, and the stem output.
  """

  def __init__(self, width: int, cifar_stem: bool, deep: bool):
    super().__init__()
    self.use_max_pool = not cifar_stem
    if cifar_stem:
      specs = [(3, 64 * width, 3, 1)]
    elif deep:
      half = 64 * width // 2
      specs = [(3, half, 3, 2), (half, half, 3, 1), (half, 64 * width, 3, 1)]
    else:
      specs = [(3, 64 * width, 7, 2)]
    self.num_convs = len(specs)
    for i, (cin, cout, k, s) in enumerate(specs, start=1):
      self.add_module(f'conv{i}', conv2d_fixed_padding(cin, cout, k, s))
      self.add_module(f'bn{i}', batch_norm(cout))

  def forward(self, x):
    for i in range(1, self.num_convs):
      x = F.relu(getattr(self, f'bn{i}')(getattr(self, f'conv{i}')(x)))
    last = self.num_convs
    initial_conv = getattr(self, f'conv{last}')(x)
    x = F.relu(getattr(self, f'bn{last}')(initial_conv))
    if self.use_max_pool:
      x = max_pool_tf_same(x)
    return initial_conv, x


# --- heads ----------------------------------------------------------------------------------------

class LinearBN(nn.Module):
  """Dense without bias followed by BN; `center=False` (no BN shift) for the head's last layer."""

  def __init__(self, in_features: int, out_features: int, center: bool):
    super().__init__()
    self.linear = nn.Linear(in_features, out_features, bias=False)
    self.bn = batch_norm(out_features, dims=1) if center else GammaOnlyBatchNorm1d(out_features)

  def forward(self, x):
    return self.bn(self.linear(x))


class ProjectionHead(nn.Module):
  """Returns the list [input, layer 1 output, ..., layer K output] (ReLU on all but the last)."""

  def __init__(self, in_features: int, mode: str, out_dim: int, num_layers: int):
    super().__init__()
    if mode not in PROJ_HEAD_MODES:
      raise ValueError(f'proj_head_mode must be one of {PROJ_HEAD_MODES}, got {mode!r}')
    layers: List[nn.Module] = []
    if mode == 'linear':
      layers.append(LinearBN(in_features, out_dim, center=False))
    elif mode == 'nonlinear':
      for j in range(num_layers):
        last = j == num_layers - 1
        layers.append(LinearBN(in_features, out_dim if last else in_features, center=not last))
    self.layers = nn.ModuleList(layers)

  def forward(self, x) -> List[torch.Tensor]:
    hiddens = [x]
    for j, layer in enumerate(self.layers):
      h = layer(hiddens[-1])
      hiddens.append(F.relu(h) if j < len(self.layers) - 1 else h)
    return hiddens


# --- top level ------------------------------------------------------------------------------------

class SimCLRTorch(nn.Module):
  """SimCLR encoder + projection head (+ supervised head); forward returns the endpoint dict.

  Keyword arguments are named like the official absl flags. `cifar_stem` overrides the
  `image_size <= 32` rule when given. `ft_proj_selector` picks the supervised head's input from
  [encoder output, projection layer 1, ..., layer K] (Python indexing). The module is put in eval
  mode on construction because it is meant to run converted weights; call .train() to fine-tune.
  """

  def __init__(self, resnet_depth: int = 50, width_multiplier: int = 1, sk_ratio: float = 0.,
               se_ratio: float = 0., image_size: int = 224, cifar_stem: Optional[bool] = None,
               proj_head_mode: str = 'nonlinear', proj_out_dim: int = 128,
               num_proj_layers: int = 3, ft_proj_selector: int = 0,
               num_classes: Optional[int] = None):
    super().__init__()
    if resnet_depth not in BLOCK_COUNTS:
      raise ValueError(f'resnet_depth must be one of {sorted(BLOCK_COUNTS)}, got {resnet_depth}')
    if cifar_stem is None:
      cifar_stem = image_size <= CIFAR_MAX_IMAGE_SIZE
    self.ft_proj_selector = ft_proj_selector
    block_cls = BottleneckBlock if resnet_depth >= BOTTLENECK_MIN_DEPTH else ResidualBlock

    self.stem = Stem(width_multiplier, cifar_stem, deep=sk_ratio > 0)
    in_channels = 64 * width_multiplier
    for g, (count, stride) in enumerate(zip(BLOCK_COUNTS[resnet_depth], BLOCK_GROUP_STRIDES)):
      filters = 64 * width_multiplier * 2 ** g
      blocks = []
      for b in range(count):
        blocks.append(block_cls(in_channels, filters, stride if b == 0 else 1,
                                use_projection=b == 0, sk_ratio=sk_ratio, se_ratio=se_ratio))
        in_channels = filters * block_cls.expansion
      self.add_module(f'layer{g + 1}', nn.Sequential(*blocks))
    self.num_features = in_channels

    self.proj_head = ProjectionHead(in_channels, proj_head_mode, proj_out_dim, num_proj_layers)
    self.supervised_head = None
    if num_classes is not None:
      sup_in = self._hidden_widths()[ft_proj_selector]
      self.supervised_head = nn.Linear(sup_in, num_classes)
    self.eval()

  def _hidden_widths(self) -> List[int]:
    return [self.num_features] + [layer.linear.out_features for layer in self.proj_head.layers]

  def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    endpoints = {}
    endpoints['initial_conv'], x = self.stem(x)
    endpoints['initial_max_pool'] = x
    for g in range(1, 5):
      x = getattr(self, f'layer{g}')(x)
      endpoints[f'block_group{g}'] = x
    hiddens = self.proj_head(x.mean(dim=(2, 3)))
    endpoints['final_avg_pool'] = hiddens[0]
    if self.supervised_head is not None:
      endpoints['logits_sup'] = self.supervised_head(hiddens[self.ft_proj_selector])
    endpoints['proj_head_input'] = hiddens[0]
    endpoints['proj_head_output'] = hiddens[-1]
    return endpoints
