"""Architecture detection from checkpoint key/shape maps (golden lists + hand-edited variants)."""

import pytest

torch = pytest.importorskip('torch')

from checkpoints_conversion import tf_to_torch as t2t  # noqa: E402
from golden_data import read_keys  # noqa: E402
from simclr_tf2.network.detect import detect_architecture  # noqa: E402

SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'


def read_golden(golden_dir, name):
  del golden_dir  # golden_data knows where the files are
  return {key: list(shape) for key, shape in read_keys(name).items()}


BASE = dict(width_multiplier=1, proj_head_mode='nonlinear', num_proj_layers=3, proj_out_dim=128,
            ft_proj_selector=0, num_classes=10)
R18_CIFAR = dict(BASE, resnet_depth=18, sk_ratio=0., se_ratio=0., cifar_stem=True, image_size=32)
# Flags from tests/data/golden/README.md (10-class dataset, image sizes 32 / 64).
GOLDEN_ARCHS = {
    'r18_cifar_pretrain_lars': R18_CIFAR,
    'r18_sk_se_cifar_pretrain_lars': dict(R18_CIFAR, sk_ratio=0.0625, se_ratio=0.25),
    'r50_imagenet_pretrain_lars': dict(BASE, resnet_depth=50, sk_ratio=0., se_ratio=0.,
                                       cifar_stem=False, image_size=224),
    'r50_sk_se_imagenet_pretrain_lars': dict(BASE, resnet_depth=50, sk_ratio=0.0625, se_ratio=0.25,
                                             cifar_stem=False, image_size=224),
    'r18_cifar_finetune_after4_lars': R18_CIFAR,
    'r18_cifar_finetune_momentum_tfkeras221': R18_CIFAR,
}


@pytest.mark.parametrize('name', sorted(GOLDEN_ARCHS))
def test_detects_golden_configurations(golden_dir, name):
  assert detect_architecture(read_golden(golden_dir, name)) == GOLDEN_ARCHS[name]


def test_keys_without_suffix(golden_dir):
  shapes = {k.replace(SUFFIX, ''): v for k, v in
            read_golden(golden_dir, 'r50_sk_se_imagenet_pretrain_lars').items()}
  assert detect_architecture(shapes) == GOLDEN_ARCHS['r50_sk_se_imagenet_pretrain_lars']


def test_sk_ratio_read_from_sk_width_above_minimum(golden_dir):
  """Widen group 4's SK attention from the 32 minimum to 64 = int(512 * 0.125)."""
  shapes = read_golden(golden_dir, 'r50_sk_se_imagenet_pretrain_lars')
  for key in list(shapes):
    if 'block_groups/3/' in key and '/conv_relu_dropblock_layers/3/' in key and '.OPTIMIZER' \
        not in key:
      if key.endswith(f'conv2d_0/kernel{SUFFIX}'):
        shapes[key] = [1, 1, 512, 64]
      elif key.endswith(f'conv2d_1/kernel{SUFFIX}'):
        shapes[key] = [1, 1, 64, 1024]
      elif '/batch_norm_relu_1/' in key:
        shapes[key] = [64]
  assert detect_architecture(shapes)['sk_ratio'] == 0.125


def test_headless_and_classless_checkpoint(golden_dir):
  shapes = {k: v for k, v in read_golden(golden_dir, 'r18_cifar_pretrain_lars').items()
            if 'supervised_head' not in k and '_projection_head' not in k}
  arch = detect_architecture(shapes)
  assert arch['num_classes'] is None
  assert (arch['proj_head_mode'], arch['num_proj_layers']) == ('none', 0)


def test_supervised_head_on_projection_output(golden_dir):
  shapes = read_golden(golden_dir, 'r18_cifar_pretrain_lars')
  shapes['model/supervised_head/linear_layer/dense/kernel' + SUFFIX] = [128, 10]
  assert detect_architecture(shapes)['ft_proj_selector'] == -1


# Round trips for configurations without golden files: the expected key/shape maps come from the
# converter's layout, which test_tf_to_torch checks against every golden list.
ROUND_TRIP = [
    dict(resnet_depth=200, width_multiplier=4, sk_ratio=0.0625, se_ratio=0.25, num_classes=1000),
    dict(resnet_depth=152, width_multiplier=3, sk_ratio=0.0625, num_proj_layers=2, num_classes=7),
    dict(resnet_depth=101, width_multiplier=2, sk_ratio=0.125, proj_out_dim=64),
    dict(resnet_depth=34, width_multiplier=2, image_size=224, proj_head_mode='none'),
    dict(resnet_depth=34, sk_ratio=0.0625, image_size=224, num_proj_layers=1, proj_out_dim=32),
]


@pytest.mark.parametrize('arch', ROUND_TRIP)
def test_round_trip(arch):
  detected = detect_architecture(t2t.tf_variable_shapes(arch))
  assert {k: detected[k] for k in arch} == arch


@pytest.mark.parametrize('shapes, match', [
    ({}, 'not a SimCLR'),
    ({'global_step': [], 'optimizer/iter': []}, 'not a SimCLR'),
    ({'conv1.weight': [64, 3, 7, 7], 'bn1.weight': [64]}, 'not a SimCLR'),
    ({'model/resnet_model/initial_conv_relu_max_pool/0/conv2d/kernel': [3, 3, 3, 64]},
     'neither bottleneck nor residual'),
])
def test_rejects_non_simclr_keys(shapes, match):
  with pytest.raises(ValueError, match=match):
    detect_architecture(shapes)


def test_rejects_unknown_depth(golden_dir):
  shapes = {k: v for k, v in read_golden(golden_dir, 'r18_cifar_pretrain_lars').items()
            if 'block_groups/3/layers/1/' not in k}
  with pytest.raises(ValueError, match=r'unknown ResNet: blocks per group \(2, 2, 2, 1\)'):
    detect_architecture(shapes)
