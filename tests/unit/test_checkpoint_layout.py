"""The model's checkpoint keys, shapes and Keras variable names equal the official golden lists.

Kn: defect numbers of the official code, listed in docs/differences.md.
"""

import numpy as np
import pytest
import tensorflow as tf

from golden_data import GOLDEN_CONFIGS, cases, fresh_golden_model, read_keys, read_varnames
from golden_data import golden_model_tree as _golden_model_tree
from simclr_tf2.architecture import VALUE_SUFFIX
from simclr_tf2.network.checkpoint import object_keys
from simclr_tf2.training.lars import EXCLUDE_FROM_WEIGHT_DECAY


@pytest.mark.parametrize('name', cases(sorted(GOLDEN_CONFIGS), fast={
    'r18_cifar_pretrain_lars', 'r18_sk_se_cifar_pretrain_lars', 'r18_cifar_finetune_after4_lars',
    'r18_cifar_finetune_momentum_tfkeras221'}))
def test_variable_names_equal_golden(name):
  model = fresh_golden_model(name)
  model.create_variables()  # eager build must name variables like the reference's traced step
  rows = ([('T', v.name, v.shape.as_list()) for v in model.trainable_variables] +
          [('N', v.name, v.shape.as_list()) for v in model.non_trainable_variables])
  assert rows == read_varnames(name)


def _structurally_excluded(key):
  """The structural rule on a checkpoint key (attribute names, not Keras names): batch-norm layers
  (attribute `bn`), biases, and everything in the supervised head."""
  path = key[:-len(VALUE_SUFFIX)]
  return '/bn/' in path or path.endswith('/bias') or path.startswith('model/supervised_head/')


# Hand-counted excluded variables. ResNet-18 CIFAR + SE: 21 encoder BN layers (stem, 2 per block,
# 4 shortcuts) x 4 = 84, projection-head BN 4 + 4 + 3 (last has no beta) = 11, SE biases 8 x 2 = 16,
# supervised head kernel + bias = 2.
EXPECTED_EXCLUDED = {'r18_sk_se_cifar_pretrain_lars': 84 + 11 + 16 + 2,
                     'r18_cifar_finetune_after4_lars': 84 + 11 + 2}


@pytest.mark.parametrize('name', cases(
    ['r18_sk_se_cifar_pretrain_lars', 'r50_sk_se_imagenet_pretrain_lars',
     'r18_cifar_finetune_after4_lars'],
    fast={'r18_sk_se_cifar_pretrain_lars', 'r18_cifar_finetune_after4_lars'}))
def test_structural_decay_exclusion_equals_reference_name_rule(name):
  """K18: exclusion decided by structure equals the reference's substring rule on golden names."""
  model = fresh_golden_model(name).create_variables()
  structural = {v.name for key, v in object_keys(model=model).items()
                if _structurally_excluded(key)}
  by_name = {row[1] for row in read_varnames(name)
             if any(p in row[1] for p in EXCLUDE_FROM_WEIGHT_DECAY)}
  assert structural == by_name
  if name in EXPECTED_EXCLUDED:
    assert len(by_name) == EXPECTED_EXCLUDED[name]


@pytest.mark.parametrize('name', cases(
    ['r18_cifar_pretrain_lars', 'r50_sk_se_imagenet_pretrain_lars'],
    fast={'r18_cifar_pretrain_lars'}))
def test_checkpoint_written_from_golden_keys_restores_every_variable(name, tmp_path):
  golden_keys = read_keys(name)
  tree, values = _golden_model_tree(golden_keys, np.random.default_rng(0))
  prefix = tf.train.Checkpoint(model=tree).save(str(tmp_path / 'golden'))

  model = fresh_golden_model(name).create_variables()
  status = tf.train.Checkpoint(model=model).restore(prefix)
  status.assert_existing_objects_matched()
  # Every model variable now holds the file's value: compare by value identity of the
  # random draws (all distinct), independent of how the model names its variables.
  file_values = {v.tobytes() for v in values.values()}
  model_values = {v.numpy().tobytes() for v in model.variables}
  assert model_values == file_values
  assert len(model.variables) == len(values)
