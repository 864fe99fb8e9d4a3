"""Readers for the official implementation's reference data (tests/data/golden/) and its flags.

Kn: defect numbers of the official code, listed in docs/differences.md.
"""

import ast
import pathlib

import numpy as np
import pytest
import tensorflow as tf

REPO = pathlib.Path(__file__).resolve().parents[1]  # the repository's root
# Reference data of the official implementation (see its README.md).
GOLDEN_DIR = pathlib.Path(__file__).resolve().parent / 'data' / 'golden'

# Flags of each golden configuration (tests/data/golden/README.md); 10 classes everywhere.
GOLDEN_CONFIGS = {
    'r18_cifar_pretrain_lars': dict(resnet_depth=18, image_size=32),
    'r18_sk_se_cifar_pretrain_lars': dict(resnet_depth=18, image_size=32, sk_ratio=0.0625,
                                          se_ratio=0.25),
    'r50_imagenet_pretrain_lars': dict(resnet_depth=50, image_size=64),
    'r50_sk_se_imagenet_pretrain_lars': dict(resnet_depth=50, image_size=64, sk_ratio=0.0625,
                                             se_ratio=0.25),
    'r18_cifar_finetune_after4_lars': dict(resnet_depth=18, image_size=32, train_mode='finetune',
                                           fine_tune_after_block=4),
    'r18_cifar_finetune_momentum_tfkeras221': dict(resnet_depth=18, image_size=32,
                                                   train_mode='finetune', optimizer='momentum'),
}
# The reference's behaviour where this port changed a default (K6/K7 only change which
# variables train, so golden lists are compared in reference-parity mode).
REFERENCE_PARITY = dict(freeze_unused_proj_head=False, freeze_bn_stats_when_frozen=False)
NUM_CLASSES = 10


def cases(names, fast):
  """pytest parameters for `names`: those not in `fast` are marked slow."""
  return [name if name in fast else pytest.param(name, marks=pytest.mark.slow) for name in names]


def _lines(path: pathlib.Path):
  for line in path.read_text().splitlines():
    if line.strip() and not line.startswith('#'):
      yield line


def read_keys(name):
  """{checkpoint key: shape list} of golden/<name>.keys.txt."""
  keys = {}
  for line in _lines(GOLDEN_DIR / f'{name}.keys.txt'):
    key, shape = line.split(' ', 1)
    keys[key] = ast.literal_eval(shape)
  return keys


def read_varnames(name):
  """[(T|N, variable name, shape list)] of golden/<name>.varnames.txt, in file order."""
  rows = []
  for line in _lines(GOLDEN_DIR / f'{name}.varnames.txt'):
    kind, var_name, shape = line.split(' ', 2)
    rows.append((kind, var_name, ast.literal_eval(shape)))
  return rows


def _standard_normal(key, shape, rng):  # pylint: disable=unused-argument
  return rng.standard_normal(shape)


def plausible_value(key, shape, rng):
  """Values a trained network could have (positive BN scales and variances, fan-in-scaled
  kernels), so a model restored from a golden tree stays finite in inference mode."""
  leaf = key[:-len('/.ATTRIBUTES/VARIABLE_VALUE')].rsplit('/', 1)[-1]
  if leaf in ('gamma', 'moving_variance'):
    return rng.uniform(0.5, 1.5, shape)
  if leaf == 'kernel':
    return rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
  return rng.normal(0., 0.1, shape)


def golden_model_tree(golden_keys, rng, draw=_standard_normal):
  """An object graph built only from golden `model/...` keys, holding random values.

  `draw(key, shape, rng)` gives each variable's value (default: standard normal). Returns the root
  and {path below `model/`: value}.
  """
  root = tf.Module()
  values = {}
  for key, shape in golden_keys.items():
    if not key.startswith('model/') or '.OPTIMIZER_SLOT' in key:
      continue
    path = key[len('model/'):-len('/.ATTRIBUTES/VARIABLE_VALUE')].split('/')
    node = root
    for part in path[:-1]:
      if not hasattr(node, part):
        setattr(node, part, tf.Module())
      node = getattr(node, part)
    value = np.asarray(draw(key, shape, rng), dtype=np.float32)
    setattr(node, path[-1], tf.Variable(value))
    values['/'.join(path)] = value
  return root, values


def fresh_golden_model(name, **overrides):
  """The model of a golden configuration in a fresh Keras session (name counters at 0, as in
  the reference process that wrote the golden lists)."""
  from simclr_tf2.network.model import build_model  # pylint: disable=import-outside-toplevel
  import tf_keras as keras  # pylint: disable=import-outside-toplevel
  keras.backend.clear_session()
  return build_model(NUM_CLASSES, **{**GOLDEN_CONFIGS[name], **REFERENCE_PARITY, **overrides})
