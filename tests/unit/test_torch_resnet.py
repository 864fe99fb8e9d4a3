"""PyTorch mirror: TF padding semantics (hand-computed + real TF ops), endpoints, heads."""

import numpy as np
import pytest

torch = pytest.importorskip('torch')
tf = pytest.importorskip('tensorflow')

from checkpoints_conversion import torch_resnet as tr  # noqa: E402

F = torch.nn.functional


def nchw(array):
  return torch.tensor(np.asarray(array, np.float32))[None, None]


def tf_nhwc(array):
  return tf.constant(np.asarray(array, np.float32)[None, :, :, None])


def run_tf(op, array):
  return op(tf_nhwc(array)).numpy()[0, :, :, 0]


# --- stem max pool 3x3/2 SAME ---------------------------------------------------------------------

MAX_POOL_CASES = [
    # 4x4: TF pads (0 before, 1 after); windows rows/cols {0..2}, {2..3}.
    (np.arange(16).reshape(4, 4), [[10, 11], [14, 15]]),
    # Negative values: padded cells must be -inf, not 0.
    (-np.arange(16).reshape(4, 4), [[0, -2], [-8, -10]]),
    # 5x5: symmetric (1, 1); window centres 0, 2, 4.
    (np.arange(25).reshape(5, 5), [[6, 8, 9], [16, 18, 19], [21, 23, 24]]),
]


@pytest.mark.parametrize('x, expected', MAX_POOL_CASES)
def test_max_pool_tf_same_hand_computed(x, expected):
  out = tr.max_pool_tf_same(nchw(x))[0, 0].numpy()
  np.testing.assert_array_equal(out, expected)
  tf_out = run_tf(lambda t: tf.nn.max_pool2d(t, 3, 2, 'SAME'), x)
  np.testing.assert_array_equal(tf_out, expected)


def test_torch_symmetric_max_pool_differs_on_even_input():
  """Why the explicit padding exists: MaxPool2d(3, 2, padding=1) shifts the windows."""
  out = F.max_pool2d(nchw(np.arange(16).reshape(4, 4)), 3, 2, padding=1)[0, 0].numpy()
  np.testing.assert_array_equal(out, [[5, 7], [13, 15]])


def test_max_pool_random_rectangular_matches_tf():
  x = np.random.default_rng(0).standard_normal((7, 10)).astype(np.float32)
  np.testing.assert_array_equal(
      tr.max_pool_tf_same(nchw(x))[0, 0].numpy(),
      run_tf(lambda t: tf.nn.max_pool2d(t, 3, 2, 'SAME'), x))


def test_tf_same_padding_amounts():
  assert tr.tf_same_padding(4, 3, 2) == (0, 1)
  assert tr.tf_same_padding(112, 3, 2) == (0, 1)
  assert tr.tf_same_padding(5, 3, 2) == (1, 1)
  assert tr.tf_same_padding(7, 2, 1) == (0, 1)


# --- ResNet-D shortcut average pools --------------------------------------------------------------

def test_avg_pool_stride1_same_excludes_padding_from_divisor():
  x = np.arange(9).reshape(3, 3)
  # Last row / column average only the 2 real cells (bottom-right corner: 1 cell).
  expected = [[2, 3, 3.5], [5, 6, 6.5], [6.5, 7.5, 8]]
  np.testing.assert_allclose(tr.avg_pool_2x2_tf_same_stride1(nchw(x))[0, 0].numpy(), expected)
  np.testing.assert_allclose(run_tf(lambda t: tf.nn.avg_pool2d(t, 2, 1, 'SAME'), x), expected)


def test_avg_pool_stride1_same_random_matches_tf():
  x = np.random.default_rng(1).standard_normal((6, 5)).astype(np.float32)
  np.testing.assert_allclose(
      tr.avg_pool_2x2_tf_same_stride1(nchw(x))[0, 0].numpy(),
      run_tf(lambda t: tf.nn.avg_pool2d(t, 2, 1, 'SAME'), x), rtol=1e-6, atol=1e-6)


def test_avg_pool_stride2_fixed_padding_counts_zeros_on_odd_sizes():
  x = np.arange(9).reshape(3, 3)
  # Zero-padded to 4x4; windows with padded cells still divide by 4.
  expected = [[2, 1.75], [3.25, 2]]
  np.testing.assert_allclose(tr.avg_pool_2x2_fixed_padding_stride2(nchw(x))[0, 0].numpy(),
                             expected)
  tf_op = lambda t: tf.nn.avg_pool2d(tf.pad(t, [[0, 0], [0, 1], [0, 1], [0, 0]]), 2, 2, 'VALID')
  np.testing.assert_allclose(run_tf(tf_op, x), expected)


def test_avg_pool_stride2_even_size_ignores_padding():
  x = np.arange(16).reshape(4, 4)
  expected = [[2.5, 4.5], [10.5, 12.5]]
  np.testing.assert_allclose(tr.avg_pool_2x2_fixed_padding_stride2(nchw(x))[0, 0].numpy(),
                             expected)


# --- convolutions ---------------------------------------------------------------------------------

def test_strided_conv_fixed_padding_hand_computed():
  conv = tr.conv2d_fixed_padding(1, 1, 3, stride=2)
  with torch.no_grad():
    conv.weight.fill_(1.)
  x = np.arange(16).reshape(4, 4)
  # Fixed padding (1, 1): windows rows/cols {-1..1}, {1..3}.
  expected = [[10, 24], [51, 90]]
  np.testing.assert_array_equal(conv(nchw(x))[0, 0].detach().numpy(), expected)
  ones = np.ones((3, 3, 1, 1), np.float32)
  tf_fixed = run_tf(lambda t: tf.nn.conv2d(
      tf.pad(t, [[0, 0], [1, 1], [1, 1], [0, 0]]), ones, 2, 'VALID'), x)
  np.testing.assert_array_equal(tf_fixed, expected)
  # TF SAME would pad (0, 1) instead: a different result, so SAME must not be used here.
  assert not np.array_equal(run_tf(lambda t: tf.nn.conv2d(t, ones, 2, 'SAME'), x), expected)


@pytest.mark.parametrize('kernel, stride, size', [(3, 1, 6), (3, 2, 7), (7, 2, 9), (7, 2, 10),
                                                  (1, 2, 5)])
def test_conv_matches_tf_fixed_padding(kernel, stride, size):
  rng = np.random.default_rng(kernel * 100 + size)
  x = rng.standard_normal((2, size, size, 3)).astype(np.float32)
  w = rng.standard_normal((kernel, kernel, 3, 4)).astype(np.float32)
  if stride == 1:
    expected = tf.nn.conv2d(x, w, 1, 'SAME')
  else:
    beg = (kernel - 1) // 2
    expected = tf.nn.conv2d(tf.pad(x, [[0, 0], [beg, kernel - 1 - beg], [beg, kernel - 1 - beg],
                                       [0, 0]]), w, stride, 'VALID')
  conv = tr.conv2d_fixed_padding(3, 4, kernel, stride)
  with torch.no_grad():
    conv.weight.copy_(torch.tensor(w).permute(3, 2, 0, 1))
    out = conv(torch.tensor(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(out, expected.numpy(), rtol=1e-5, atol=1e-5)


# --- endpoints ------------------------------------------------------------------------------------

ENDPOINT_KEYS = ['initial_conv', 'initial_max_pool', 'block_group1', 'block_group2',
                 'block_group3', 'block_group4', 'final_avg_pool', 'logits_sup',
                 'proj_head_input', 'proj_head_output']


def expected_shapes(depth, size, stem_size, pool_size):
  """Hand table: CIFAR stem keeps the size, ImageNet stem halves it twice."""
  mult = 4 if depth >= 50 else 1
  g = [pool_size, -(-pool_size // 2), -(-pool_size // 4), -(-pool_size // 8)]
  return {
      'initial_conv': (2, 64, stem_size, stem_size),
      'initial_max_pool': (2, 64, pool_size, pool_size),
      'block_group1': (2, 64 * mult, g[0], g[0]),
      'block_group2': (2, 128 * mult, g[1], g[1]),
      'block_group3': (2, 256 * mult, g[2], g[2]),
      'block_group4': (2, 512 * mult, g[3], g[3]),
      'final_avg_pool': (2, 512 * mult),
      'logits_sup': (2, 10),
      'proj_head_input': (2, 512 * mult),
      'proj_head_output': (2, 128),
  }


@pytest.mark.parametrize('depth', [18, 50])
@pytest.mark.parametrize('size, stem_size, pool_size', [(32, 32, 32), (64, 32, 16), (65, 33, 17)])
def test_endpoint_shapes(depth, size, stem_size, pool_size):
  model = tr.SimCLRTorch(resnet_depth=depth, image_size=size, num_classes=10)
  with torch.no_grad():
    out = model(torch.rand(2, 3, size, size))
  assert list(out) == ENDPOINT_KEYS
  assert {k: tuple(v.shape) for k, v in out.items()} == expected_shapes(depth, size, stem_size,
                                                                       pool_size)
  torch.testing.assert_close(out['proj_head_input'], out['final_avg_pool'])
  torch.testing.assert_close(out['final_avg_pool'], out['block_group4'].mean(dim=(2, 3)))


def test_sk_se_model_runs_and_has_no_logits_without_classes():
  model = tr.SimCLRTorch(resnet_depth=50, sk_ratio=0.0625, se_ratio=0.25, image_size=64)
  with torch.no_grad():
    out = model(torch.rand(2, 3, 64, 64))
  assert 'logits_sup' not in out
  assert tuple(out['initial_max_pool'].shape) == (2, 64, 16, 16)
  assert tuple(out['block_group4'].shape) == (2, 2048, 2, 2)


def test_depth200_width4_shapes_on_meta_device():
  with torch.device('meta'):
    model = tr.SimCLRTorch(resnet_depth=200, width_multiplier=4, sk_ratio=0.0625, se_ratio=0.25,
                           num_classes=1000)
  assert [len(getattr(model, f'layer{g}')) for g in range(1, 5)] == [3, 24, 36, 3]
  assert model.num_features == 8192
  assert tuple(model.stem.conv1.weight.shape) == (128, 3, 3, 3)  # 64*4 // 2, deep stem
  assert tuple(model.stem.conv3.weight.shape) == (256, 128, 3, 3)
  sk = model.layer4[0].conv2
  assert tuple(sk.attn_reduce.weight.shape) == (128, 2048, 1, 1)  # int(2048 * 0.0625) > 32
  assert tuple(model.layer4[0].se.reduce.weight.shape) == (512, 8192, 1, 1)  # from filters 2048


def test_eval_mode_and_bn_hyperparameters():
  model = tr.SimCLRTorch(resnet_depth=18, image_size=32)
  assert not model.training
  bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
  assert bns and all(m.eps == 1e-5 and m.momentum == 0.1 for m in bns)


# --- heads ----------------------------------------------------------------------------------------

def test_projection_head_layers_and_last_bn_has_frozen_zero_bias():
  model = tr.SimCLRTorch(resnet_depth=18, image_size=32, num_proj_layers=3, proj_out_dim=16)
  layers = model.proj_head.layers
  assert [tuple(l.linear.weight.shape) for l in layers] == [(512, 512), (512, 512), (16, 512)]
  assert all(l.linear.bias is None for l in layers)
  assert isinstance(layers[0].bn.bias, torch.nn.Parameter)
  assert not isinstance(layers[2].bn.bias, torch.nn.Parameter)
  assert 'proj_head.layers.2.bn.bias' in model.state_dict()
  assert all('proj_head.layers.2.bn.bias' != n for n, _ in model.named_parameters())


def test_projection_head_forward_hand_computed():
  """2 layers, BN as identity: out = W1 relu(W0 h); ReLU only between layers."""
  head = tr.ProjectionHead(2, 'nonlinear', out_dim=1, num_layers=2).eval()
  with torch.no_grad():
    head.layers[0].linear.weight.copy_(torch.tensor([[1., 0.], [0., -1.]]))
    head.layers[1].linear.weight.copy_(torch.tensor([[1., -1.]]))
    hiddens = head(torch.tensor([[2., 3.]]))
  scale = 1 / np.sqrt(1 + 1e-5)  # eval BN with mean 0, var 1
  np.testing.assert_allclose(hiddens[1].numpy(), [[2 * scale, 0]], rtol=1e-6)
  np.testing.assert_allclose(hiddens[2].numpy(), [[2 * scale * scale]], rtol=1e-6)


@pytest.mark.parametrize('mode, widths', [('none', [512]), ('linear', [512, 32]),
                                          ('nonlinear', [512, 512, 32])])
def test_projection_head_modes(mode, widths):
  model = tr.SimCLRTorch(resnet_depth=18, image_size=32, proj_head_mode=mode, proj_out_dim=32,
                         num_proj_layers=2, num_classes=3, ft_proj_selector=-1)
  with torch.no_grad():
    out = model(torch.rand(2, 3, 16, 16))
  assert out['proj_head_output'].shape[1] == widths[-1]
  assert model.supervised_head.in_features == widths[-1]
  if mode == 'none':
    torch.testing.assert_close(out['proj_head_output'], out['final_avg_pool'])


def test_invalid_arguments():
  with pytest.raises(ValueError, match='resnet_depth'):
    tr.SimCLRTorch(resnet_depth=42)
  with pytest.raises(ValueError, match='proj_head_mode'):
    tr.SimCLRTorch(resnet_depth=18, proj_head_mode='mlp')
