"""TF checkpoint values -> PyTorch: golden key lists, strictness, numerical parity, torchvision, I/O.

The numerical reference below is an independent TF implementation of the architecture
(docs/architecture-notes.md) written with raw TF ops (TF's own SAME/VALID padding), reading the
checkpoint-key dict directly.
"""

import os

import numpy as np
import pytest

torch = pytest.importorskip('torch')
tf = pytest.importorskip('tensorflow')

from simclr_tf2.network import detect  # noqa: E402
from golden_data import read_keys  # noqa: E402
from checkpoints_conversion import tf_to_torch as t2t  # noqa: E402
from checkpoints_conversion.torch_resnet import SimCLRTorch  # noqa: E402

SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'
GOLDEN = ['r18_cifar_pretrain_lars', 'r18_sk_se_cifar_pretrain_lars', 'r50_imagenet_pretrain_lars',
          'r50_sk_se_imagenet_pretrain_lars', 'r18_cifar_finetune_after4_lars',
          'r18_cifar_finetune_momentum_tfkeras221']


def read_golden(golden_dir, name):
  del golden_dir  # golden_data knows where the files are
  return {key: tuple(shape) for key, shape in read_keys(name).items()}


def random_values(shapes, seed=0):
  """Random, well-conditioned values: He-scaled kernels, positive variances, distinct entries.

  Optimizer slots get their variable's array (same shape, no extra memory); the converter must
  ignore them anyway.
  """
  rng = np.random.default_rng(seed)
  values = {}
  for key, shape in sorted(shapes.items()):
    if '.OPTIMIZER_SLOT' in key or not key.startswith('model/'):
      continue
    leaf = key.replace(SUFFIX, '').rsplit('/', 1)[-1]
    if leaf == 'kernel':
      value = rng.standard_normal(shape, np.float32) * np.float32(np.prod(shape[:-1]) ** -0.5)
    elif leaf in ('gamma', 'moving_variance'):
      value = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      value = rng.standard_normal(shape, np.float32) * np.float32(0.1)
    values[key] = value
  for key, shape in shapes.items():
    if key not in values:
      slot_of = key.split('/.OPTIMIZER_SLOT/')[0] + SUFFIX
      values[key] = values.get(slot_of, np.zeros(shape, np.float32))
  return values


@pytest.fixture(scope='module')
def golden(golden_dir):
  """name -> (shapes, values) for every golden configuration, generated once."""
  return {name: (shapes, random_values(shapes)) for name in GOLDEN
          for shapes in [read_golden(golden_dir, name)]}


@pytest.fixture(scope='module')
def converted(golden):
  """name -> converted state dict (arch detected), computed once per name."""
  cache = {}

  def get(name):
    if name not in cache:
      cache[name] = t2t.checkpoint_to_state_dict(golden[name][1])
    return cache[name]
  return get


def model_vars(values):
  return {k.replace(SUFFIX, '')[len('model/'):]: v for k, v in values.items()
          if k.startswith('model/') and '.OPTIMIZER_SLOT' not in k}


# --- golden key lists -----------------------------------------------------------------------------

@pytest.mark.parametrize('name', GOLDEN)
def test_golden_converts_and_loads_strictly(golden, converted, name):
  shapes, values = golden[name]
  state = converted(name)
  model = SimCLRTorch(**detect.detect_architecture(shapes))
  model.load_state_dict(state, strict=True)

  # Every TF variable, transformed by the conversion rule (transpose/permute), is found among the
  # model's tensors, and the only other entries are num_batches_tracked (0) and the zero bias of
  # gamma-only BNs.
  torch_values = {k: v.numpy() for k, v in model.state_dict().items()}
  fingerprints = {v.tobytes(): k for k, v in torch_values.items()}
  used = set()
  for key, value in model_vars(values).items():
    if key.endswith('kernel'):
      value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    torch_key = fingerprints.get(np.ascontiguousarray(value).tobytes())
    assert torch_key is not None, f'{key} not found in the state dict'
    assert torch_values[torch_key].shape == value.shape
    used.add(torch_key)
  rest = set(torch_values) - used
  assert all(k.endswith('num_batches_tracked') and torch_values[k] == 0 for k in rest
             if not k.endswith('.bias'))
  zero_biases = {k for k in rest if k.endswith('.bias')}
  gammas_without_beta = {k for k in model_vars(values)
                         if k.endswith('/gamma') and k[:-5] + 'beta' not in model_vars(values)}
  assert len(zero_biases) == len(gammas_without_beta) == 1  # last projection layer only
  assert all(not torch_values[k].any() for k in zero_biases)


# Hand-written correspondences from the official key layout (index shifts of ResNet-D, SK, SE).
NAMING = {
    'r18_sk_se_cifar_pretrain_lars': {
        'resnet_model/initial_conv_relu_max_pool/2/bn/gamma': 'stem.bn1.weight',
        'resnet_model/block_groups/0/layers/0/shortcut_layers/1/conv2d/kernel':
            'layer1.0.shortcut.conv.weight',
        'resnet_model/block_groups/0/layers/0/shortcut_layers/2/bn/moving_mean':
            'layer1.0.shortcut.bn.running_mean',
        'resnet_model/block_groups/1/layers/0/shortcut_layers/2/conv2d/kernel':
            'layer2.0.shortcut.conv.weight',
        'resnet_model/block_groups/1/layers/0/shortcut_layers/3/bn/beta':
            'layer2.0.shortcut.bn.bias',
        'resnet_model/block_groups/3/layers/1/se_layer/se_reduce/bias': 'layer4.1.se.reduce.bias',
        'resnet_model/block_groups/3/layers/1/conv2d_bn_layers/3/bn/moving_variance':
            'layer4.1.bn2.running_var',
    },
    'r50_sk_se_imagenet_pretrain_lars': {
        'resnet_model/initial_conv_relu_max_pool/2/conv2d/kernel': 'stem.conv2.weight',
        'resnet_model/initial_conv_relu_max_pool/4/conv2d/kernel': 'stem.conv3.weight',
        'resnet_model/initial_conv_relu_max_pool/6/bn/beta': 'stem.bn3.bias',
        'resnet_model/block_groups/2/layers/5/conv_relu_dropblock_layers/3/conv2d_fixed_padding/'
        'conv2d/kernel': 'layer3.5.conv2.conv.weight',
        'resnet_model/block_groups/2/layers/5/conv_relu_dropblock_layers/3/batch_norm_relu_1/bn/'
        'gamma': 'layer3.5.conv2.attn_bn.weight',
        'resnet_model/block_groups/2/layers/5/conv_relu_dropblock_layers/3/conv2d_1/kernel':
            'layer3.5.conv2.attn_expand.weight',
        'resnet_model/block_groups/2/layers/5/conv_relu_dropblock_layers/5/conv2d/kernel':
            'layer3.5.conv3.weight',
        'resnet_model/block_groups/2/layers/5/conv_relu_dropblock_layers/8/se_expand/kernel':
            'layer3.5.se.expand.weight',
        'resnet_model/block_groups/3/layers/0/projection_layers/3/bn/gamma':
            'layer4.0.shortcut.bn.weight',
    },
    'r50_imagenet_pretrain_lars': {
        'resnet_model/block_groups/1/layers/3/conv_relu_dropblock_layers/4/bn/beta':
            'layer2.3.bn2.bias',
        'resnet_model/block_groups/1/layers/3/conv_relu_dropblock_layers/6/conv2d/kernel':
            'layer2.3.conv3.weight',
        'resnet_model/block_groups/0/layers/0/projection_layers/0/conv2d/kernel':
            'layer1.0.shortcut.conv.weight',
        '_projection_head/linear_layers/1/bn_relu/bn/beta': 'proj_head.layers.1.bn.bias',
        '_projection_head/linear_layers/2/dense/kernel': 'proj_head.layers.2.linear.weight',
        'supervised_head/linear_layer/dense/bias': 'supervised_head.bias',
    },
}


@pytest.mark.parametrize('name', sorted(NAMING))
def test_key_naming(golden, converted, name):
  values = model_vars(golden[name][1])
  state = converted(name)
  for tf_key, torch_key in NAMING[name].items():
    value = values[tf_key]
    if tf_key.endswith('kernel'):
      value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    np.testing.assert_array_equal(state[torch_key].numpy(), value, err_msg=tf_key)


def test_variable_shapes_match_golden(golden):
  for name, (shapes, _) in golden.items():
    expected = {'model/' + k: tuple(v.shape) for k, v in model_vars(golden[name][1]).items()}
    assert t2t.tf_variable_shapes(detect.detect_architecture(shapes)) == expected, name


# --- strictness -----------------------------------------------------------------------------------

def test_keys_without_suffix_and_without_non_model_entries(golden, converted):
  _, values = golden['r18_cifar_pretrain_lars']
  bare = {'model/' + k: v for k, v in model_vars(values).items()}
  state = t2t.checkpoint_to_state_dict(bare)
  reference = converted('r18_cifar_pretrain_lars')
  assert state.keys() == reference.keys()
  assert all(torch.equal(state[k], reference[k]) for k in state)


def test_missing_key_raises(golden):
  _, values = golden['r18_cifar_pretrain_lars']
  key = 'model/resnet_model/block_groups/2/layers/1/conv2d_bn_layers/3/bn/moving_mean' + SUFFIX
  broken = {k: v for k, v in values.items() if k != key}
  with pytest.raises(ValueError, match='missing checkpoint variables.*\n.*layers/1/conv2d_bn'):
    t2t.checkpoint_to_state_dict(broken)


def test_extra_key_raises(golden):
  _, values = golden['r18_cifar_pretrain_lars']
  broken = dict(values)
  broken['model/resnet_model/block_groups/0/layers/0/se_layer/se_reduce/kernel' + SUFFIX] = (
      np.zeros((1, 1, 64, 16), np.float32))
  with pytest.raises(ValueError, match='unexpected checkpoint variables.*\n.*se_reduce/kernel'):
    t2t.checkpoint_to_state_dict(broken)


def test_wrong_architecture_raises(golden):
  shapes, values = golden['r18_cifar_pretrain_lars']
  arch = detect.detect_architecture(shapes)
  with pytest.raises(ValueError, match='shape mismatches.*\n.*proj_head.layers.2'):
    t2t.checkpoint_to_state_dict(values, dict(arch, proj_out_dim=64))
  with pytest.raises(ValueError, match='missing'):
    t2t.checkpoint_to_state_dict(values, dict(arch, resnet_depth=34))
  with pytest.raises(ValueError, match='unexpected.*\n.*shortcut_layers/0'):
    t2t.checkpoint_to_state_dict(values, dict(arch, sk_ratio=0.0625))


# --- numerical parity with TF ops ------------------------------------------------------------------

class TFReference:
  """The official forward pass in inference mode with raw TF ops, reading checkpoint keys."""

  def __init__(self, values, arch):
    self.v = model_vars(values)
    self.arch = arch

  def conv(self, x, path, stride=1):
    kernel = self.v[path + '/kernel']
    if stride == 1:
      return tf.nn.conv2d(x, kernel, 1, 'SAME')
    beg = (kernel.shape[0] - 1) // 2
    end = kernel.shape[0] - 1 - beg
    return tf.nn.conv2d(tf.pad(x, [[0, 0], [beg, end], [beg, end], [0, 0]]), kernel, stride,
                        'VALID')

  def bn(self, x, path, relu=True):
    beta = self.v.get(path + '/beta', 0.)
    x = tf.nn.batch_normalization(x, self.v[path + '/moving_mean'],
                                  self.v[path + '/moving_variance'], beta, self.v[path + '/gamma'],
                                  1e-5)
    return tf.nn.relu(x) if relu else x

  def se(self, x, path):
    s = tf.reduce_mean(x, [1, 2], keepdims=True)
    s = tf.nn.relu(tf.nn.conv2d(s, self.v[path + '/se_reduce/kernel'], 1, 'SAME')
                   + self.v[path + '/se_reduce/bias'])
    s = tf.nn.conv2d(s, self.v[path + '/se_expand/kernel'], 1, 'SAME') + self.v[
        path + '/se_expand/bias']
    return tf.sigmoid(s) * x

  def sk(self, x, path, stride):
    x = self.bn(self.conv(x, path + '/conv2d_fixed_padding/conv2d', stride),
                path + '/batch_norm_relu/bn')
    streams = tf.stack(tf.split(x, 2, axis=3))
    g = tf.reduce_mean(tf.reduce_sum(streams, 0), [1, 2], keepdims=True)
    g = self.bn(self.conv(g, path + '/conv2d_0'), path + '/batch_norm_relu_1/bn')
    m = tf.nn.softmax(tf.stack(tf.split(self.conv(g, path + '/conv2d_1'), 2, axis=3)), axis=0)
    return tf.reduce_sum(streams * m, 0)

  def shortcut(self, x, path, stride):
    if self.arch['sk_ratio'] == 0:
      return self.bn(self.conv(x, path + '/0/conv2d', stride), path + '/1/bn', relu=False)
    if stride == 1:
      x, first = tf.nn.avg_pool2d(x, 2, 1, 'SAME'), 1
    else:
      x, first = tf.nn.avg_pool2d(tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]]), 2, stride,
                                  'VALID'), 2
    return self.bn(self.conv(x, f'{path}/{first}/conv2d'), f'{path}/{first + 1}/bn', relu=False)

  def block(self, x, path, stride, first):
    if self.arch['resnet_depth'] < 50:
      shortcut = self.shortcut(x, path + '/shortcut_layers', stride) if first else x
      y = self.bn(self.conv(x, path + '/conv2d_bn_layers/0/conv2d', stride),
                  path + '/conv2d_bn_layers/1/bn')
      y = self.bn(self.conv(y, path + '/conv2d_bn_layers/2/conv2d'),
                  path + '/conv2d_bn_layers/3/bn', relu=False)
      if self.arch['se_ratio'] > 0:
        y = self.se(y, path + '/se_layer')
      return tf.nn.relu(y + shortcut)
    shortcut = self.shortcut(x, path + '/projection_layers', stride) if first else x
    p = path + '/conv_relu_dropblock_layers/'
    y = self.bn(self.conv(x, p + '0/conv2d'), p + '1/bn')
    if self.arch['sk_ratio'] > 0:
      y = self.sk(y, p + '3', stride)
      y = self.bn(self.conv(y, p + '5/conv2d'), p + '6/bn', relu=False)
      se = p + '8'
    else:
      y = self.bn(self.conv(y, p + '3/conv2d', stride), p + '4/bn')
      y = self.bn(self.conv(y, p + '6/conv2d'), p + '7/bn', relu=False)
      se = p + '9'
    if self.arch['se_ratio'] > 0:
      y = self.se(y, se)
    return tf.nn.relu(y + shortcut)

  def __call__(self, x):
    out = {}
    stem = 'resnet_model/initial_conv_relu_max_pool/'
    if self.arch['cifar_stem']:
      out['initial_conv'] = x = self.conv(x, stem + '0/conv2d')
      out['initial_max_pool'] = x = self.bn(x, stem + '2/bn')
    else:
      if self.arch['sk_ratio'] > 0:
        x = self.bn(self.conv(x, stem + '0/conv2d', 2), stem + '1/bn')
        x = self.bn(self.conv(x, stem + '2/conv2d'), stem + '3/bn')
        out['initial_conv'] = x = self.conv(x, stem + '4/conv2d')
        x = self.bn(x, stem + '6/bn')
      else:
        out['initial_conv'] = x = self.conv(x, stem + '0/conv2d', 2)
        x = self.bn(x, stem + '2/bn')
      out['initial_max_pool'] = x = tf.nn.max_pool2d(x, 3, 2, 'SAME')
    blocks = {18: 2, 50: 3}[self.arch['resnet_depth']]  # group sizes are (2,2,2,2) / (3,4,6,3)
    for g, count in enumerate([blocks, 2 * blocks - 2 if blocks == 3 else 2,
                               6 if blocks == 3 else 2, blocks]):
      for b in range(count):
        x = self.block(x, f'resnet_model/block_groups/{g}/layers/{b}', 2 if g and not b else 1,
                       first=b == 0)
      out[f'block_group{g + 1}'] = x
    h = tf.reduce_mean(x, [1, 2])
    out['final_avg_pool'] = out['proj_head_input'] = h
    hiddens = [h]
    layers = self.arch['num_proj_layers']
    for j in range(layers):
      layer = f'_projection_head/linear_layers/{j}/'
      y = self.bn(tf.matmul(hiddens[-1], self.v[layer + 'dense/kernel']), layer + 'bn_relu/bn',
                  relu=j < layers - 1)
      hiddens.append(y)
    out['proj_head_output'] = hiddens[-1]
    out['logits_sup'] = (tf.matmul(hiddens[0], self.v['supervised_head/linear_layer/dense/kernel'])
                         + self.v['supervised_head/linear_layer/dense/bias'])
    return out


# (golden config, input size): odd sizes exercise the asymmetric paddings.
PARITY_CASES = [('r18_cifar_pretrain_lars', 32), ('r18_sk_se_cifar_pretrain_lars', 30),
                ('r50_imagenet_pretrain_lars', 64), ('r50_sk_se_imagenet_pretrain_lars', 50)]


@pytest.mark.parametrize('name, size', PARITY_CASES)
def test_forward_matches_tf_reference(golden, converted, name, size):
  shapes, values = golden[name]
  arch = detect.detect_architecture(shapes)
  model = SimCLRTorch(**arch)
  model.load_state_dict(converted(name), strict=True)
  x = np.random.default_rng(size).uniform(0, 1, (2, size, size, 3)).astype(np.float32)
  expected = TFReference(values, arch)(tf.constant(x))
  with torch.no_grad():
    out = model(torch.tensor(x).permute(0, 3, 1, 2))
  assert set(out) == set(expected)
  for key, value in expected.items():
    value = value.numpy()
    got = out[key].numpy()
    if got.ndim == 4:
      got = got.transpose(0, 2, 3, 1)
    scale = np.abs(value).max()
    np.testing.assert_allclose(got, value, rtol=1e-4, atol=1e-4 * scale, err_msg=key)


# --- torchvision layout ---------------------------------------------------------------------------

def torchvision_resnet50_keys(with_fc=True):
  """torchvision.models.resnet50().state_dict() keys, written out from its documented layout."""
  bn = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')
  keys = {'conv1.weight'} | {f'bn1.{p}' for p in bn}
  for g, count in enumerate((3, 4, 6, 3), start=1):
    for i in range(count):
      for n in (1, 2, 3):
        keys.add(f'layer{g}.{i}.conv{n}.weight')
        keys |= {f'layer{g}.{i}.bn{n}.{p}' for p in bn}
    keys.add(f'layer{g}.0.downsample.0.weight')
    keys |= {f'layer{g}.0.downsample.1.{p}' for p in bn}
  if with_fc:
    keys |= {'fc.weight', 'fc.bias'}
  return keys


def test_torchvision_layout_key_set(converted):
  state = converted('r50_imagenet_pretrain_lars')
  tv = t2t.to_torchvision_resnet_state_dict(state)
  assert set(tv) == torchvision_resnet50_keys()
  assert len(torchvision_resnet50_keys()) == 320  # 267 + 53 num_batches_tracked
  assert set(t2t.to_torchvision_resnet_state_dict(state, include_fc=False)) == (
      torchvision_resnet50_keys(with_fc=False))
  assert tv['layer3.0.downsample.0.weight'] is state['layer3.0.shortcut.conv.weight']
  assert tuple(tv['conv1.weight'].shape) == (64, 3, 7, 7)
  assert tuple(tv['fc.weight'].shape) == (10, 2048)


@pytest.mark.parametrize('name, reason', [('r50_sk_se_imagenet_pretrain_lars', 'sk_ratio'),
                                          ('r18_cifar_pretrain_lars', 'stem conv')])
def test_torchvision_layout_refuses_non_plain_models(converted, name, reason):
  state = converted(name)
  with pytest.raises(ValueError, match=reason):
    t2t.to_torchvision_resnet_state_dict(state)


def test_torchvision_layout_refuses_basic_block_imagenet_model():
  with torch.device('meta'):
    state = SimCLRTorch(resnet_depth=18, image_size=224).state_dict()
  with pytest.raises(ValueError, match='layer1.0'):
    t2t.to_torchvision_resnet_state_dict(state)


def test_torchvision_layout_refuses_se():
  with torch.device('meta'):
    state = SimCLRTorch(resnet_depth=50, image_size=224, se_ratio=0.25).state_dict()
  with pytest.raises(ValueError, match='se_ratio'):
    t2t.to_torchvision_resnet_state_dict(state)


# --- writing --------------------------------------------------------------------------------------

SMALL_STATE = {'a.weight': torch.arange(6.).reshape(2, 3).t(),  # non-contiguous on purpose
               'a.num_batches_tracked': torch.tensor(0)}


def test_save_pth_and_safetensors(tmp_path):
  from safetensors.torch import load_file
  t2t.save_state_dict(SMALL_STATE, str(tmp_path / 'm.pth'))
  t2t.save_state_dict(SMALL_STATE, str(tmp_path / 'm.safetensors'))
  assert sorted(os.listdir(tmp_path)) == ['m.pth', 'm.safetensors']  # no temp files left
  for loaded in (torch.load(tmp_path / 'm.pth'), load_file(str(tmp_path / 'm.safetensors'))):
    assert loaded.keys() == SMALL_STATE.keys()
    for k, v in SMALL_STATE.items():
      torch.testing.assert_close(loaded[k], v)


def test_save_overwrites_atomically(tmp_path):
  path = tmp_path / 'm.pth'
  path.write_bytes(b'old')
  t2t.save_state_dict(SMALL_STATE, str(path))
  assert torch.load(path).keys() == SMALL_STATE.keys()


@pytest.mark.parametrize('filename', ['m.pt', 'm.bin', 'm', 'm.safetensor'])
def test_save_wrong_extension_writes_nothing(tmp_path, filename):
  with pytest.raises(ValueError, match='.pth'):
    t2t.save_state_dict(SMALL_STATE, str(tmp_path / filename))
  assert os.listdir(tmp_path) == []


def test_save_failure_leaves_no_temp_file(tmp_path):
  with pytest.raises(Exception):
    t2t.save_state_dict({'x': 'not a tensor'}, str(tmp_path / 'm.safetensors'))
  assert os.listdir(tmp_path) == []
