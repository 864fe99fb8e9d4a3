"""Model forward pass: endpoint shapes, sync BN, freezing, and the fixed official defects.

Kn: defect numbers of the official code, listed in docs/differences.md.
"""

import re

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from simclr_tf2.network.checkpoint import object_keys
from simclr_tf2.network.model import ENDPOINT_NAMES, build_model
from simclr_tf2.network.resnet import BatchNormRelu, NormSettings

BATCH = 2


def _expected_endpoint_shapes(depth, size, width=1, num_classes=10, proj_out_dim=128):
  """Hand-derived: CIFAR stem keeps 32 px; ImageNet stem /2 then pool /2."""
  expansion = 1 if depth < 50 else 4
  stem = size if size <= 32 else size // 2
  pooled = size if size <= 32 else size // 4
  out = 512 * expansion * width
  shapes = {'initial_conv': [BATCH, stem, stem, 64 * width],
            'initial_max_pool': [BATCH, pooled, pooled, 64 * width]}
  for group in range(4):
    side = pooled // 2 ** group
    shapes[f'block_group{group + 1}'] = [BATCH, side, side, 64 * 2 ** group * expansion * width]
  shapes.update(final_avg_pool=[BATCH, out], logits_sup=[BATCH, num_classes],
                proj_head_input=[BATCH, out], proj_head_output=[BATCH, proj_out_dim])
  return shapes


def _endpoint_shapes(model, size):
  endpoints = model.call_with_endpoints(tf.random.uniform([BATCH, size, size, 3]))
  assert list(endpoints) == list(ENDPOINT_NAMES)
  return {name: t.shape.as_list() for name, t in endpoints.items()}


# Both stems (32 px: CIFAR's, 64 px: ImageNet's) on the basic and the first bottleneck depths;
# the deeper bottleneck networks differ from ResNet-50 in block counts only: one stem each.
@pytest.mark.parametrize('depth,size', [(d, s) for d in (18, 34, 50) for s in (32, 64)] + [
    pytest.param(d, s, marks=pytest.mark.slow) for d, s in ((101, 64), (152, 32), (200, 32))])
def test_endpoint_shapes_every_depth(depth, size):
  model = build_model(10, resnet_depth=depth, image_size=size)
  assert _endpoint_shapes(model, size) == _expected_endpoint_shapes(depth, size)


@pytest.mark.parametrize('depth,size,sk,se,width', [
    (18, 32, 0.0625, 0.25, 1), (50, 32, 0.0625, 0., 1),
    pytest.param(50, 64, 0.0625, 0.25, 1, marks=pytest.mark.slow),
    pytest.param(50, 64, 0., 0.25, 2, marks=pytest.mark.slow), (34, 64, 0.0625, 0., 1)])
def test_endpoint_shapes_sk_se_width(depth, size, sk, se, width):
  model = build_model(10, resnet_depth=depth, image_size=size, sk_ratio=sk, se_ratio=se,
                      width_multiplier=width, proj_out_dim=64)
  assert _endpoint_shapes(model, size) == _expected_endpoint_shapes(depth, size, width,
                                                                    proj_out_dim=64)


def test_pretrain_views_are_stacked_on_the_batch_axis():
  model = build_model(10, resnet_depth=18, image_size=32, use_blur=False)
  view1 = tf.random.uniform([3, 32, 32, 3], seed=1)
  view2 = tf.random.uniform([3, 32, 32, 3], seed=2)
  projection, logits = model(tf.concat([view1, view2], -1), training=False)
  assert projection.shape == [6, 128] and logits.shape == [6, 10]
  alone, _ = model(view2, training=False)  # inference: rows do not interact
  np.testing.assert_allclose(projection[3:], alone, atol=1e-5)


def test_sync_batch_norm_uses_global_batch_statistics(two_replica_strategy):
  images = np.random.default_rng(0).standard_normal([8, 3, 3, 4]).astype(np.float32)
  decay = 0.9
  with two_replica_strategy.scope():
    layer = BatchNormRelu(NormSettings(decay=decay, synchronized=True), relu=False)
    layer.build([None, 3, 3, 4])
  per_replica = two_replica_strategy.experimental_distribute_values_from_function(
      lambda ctx: images[4 * ctx.replica_id_in_sync_group:4 * (ctx.replica_id_in_sync_group + 1)])
  outputs = two_replica_strategy.run(lambda x: layer(x, training=True), (per_replica,))
  outputs = np.concatenate([t.numpy() for t in two_replica_strategy.experimental_local_results(
      outputs)])
  mean = images.mean(axis=(0, 1, 2))
  variance = images.var(axis=(0, 1, 2))  # biased, over the global batch of 8
  np.testing.assert_allclose(outputs, (images - mean) / np.sqrt(variance + 1e-5), atol=1e-5)
  np.testing.assert_allclose(layer.bn.moving_mean.numpy(), (1 - decay) * mean, atol=1e-6)
  np.testing.assert_allclose(layer.bn.moving_variance.numpy(), decay + (1 - decay) * variance,
                             atol=1e-6)


@pytest.mark.slow  # test_sync_batch_norm_uses_global_batch_statistics is the fast check
def test_whole_model_on_two_replicas_equals_one_device(two_replica_strategy):
  images = tf.random.uniform([4, 32, 32, 3], seed=3)
  config = dict(resnet_depth=18, image_size=32, train_mode='finetune', width_multiplier=1)
  keras.utils.set_random_seed(0)
  single = build_model(10, **config).create_variables()
  with two_replica_strategy.scope():
    mirrored = build_model(10, **config).create_variables()
  mirrored.set_weights(single.get_weights())
  _, expected = single(images, training=True)
  per_replica = two_replica_strategy.experimental_distribute_values_from_function(
      lambda ctx: images[2 * ctx.replica_id_in_sync_group:2 * (ctx.replica_id_in_sync_group + 1)])
  results = two_replica_strategy.run(
      tf.function(lambda x: mirrored(x, training=True)[1]), (per_replica,))
  logits = tf.concat(two_replica_strategy.experimental_local_results(results), 0)
  np.testing.assert_allclose(logits, expected, atol=1e-4)


# --- freezing (docs/architecture-notes.md, "Freezing") --------------------------------------

def _trainable_parts(model):
  parts = set()
  for var in model.trainable_variables:
    segments = var.name.split('/')
    top = re.sub(r'_\d+$', '', segments[0])  # other models in this process: resnet_3, ...
    if top == 'resnet':
      parts.add(segments[1] if segments[1].startswith('block_group') else 'stem')
    else:
      parts.add(top)
  return parts


@pytest.mark.parametrize('ftab,trainable_encoder_parts', [
    (-1, {'stem', 'block_group1', 'block_group2', 'block_group3', 'block_group4'}),
    (0, {'block_group1', 'block_group2', 'block_group3', 'block_group4'}),
    (1, {'block_group2', 'block_group3', 'block_group4'}),
    (2, {'block_group3', 'block_group4'}),
    (3, {'block_group4'}),
    (4, set())])  # other values are rejected by Config.validate (tests/unit/test_errors.py)
def test_fine_tune_after_block_freezes_the_reference_parts(ftab, trainable_encoder_parts):
  model = build_model(10, resnet_depth=18, image_size=32, train_mode='finetune',
                      fine_tune_after_block=ftab, freeze_unused_proj_head=False)
  model.create_variables()
  assert _trainable_parts(model) == trainable_encoder_parts | {'projection_head',
                                                               'head_supervised'}


def test_pretraining_with_frozen_blocks_is_an_error():
  with pytest.raises(ValueError, match='fine_tune_after_block'):
    build_model(10, resnet_depth=18, image_size=32, fine_tune_after_block=2)


def _moving_statistics(variables):
  return [v.numpy().copy() for v in variables if 'moving_' in v.name]


def _projection_head_variables(model):
  """By checkpoint path: Keras names get a process-dependent suffix (projection_head_3/...)."""
  return [v for key, v in object_keys(model=model).items()
          if key.startswith('model/_projection_head/')]


def _changed(before, after):
  return [not np.array_equal(b, a) for b, a in zip(before, after)]


@pytest.mark.parametrize('freeze_stats', [True, False])
def test_linear_eval_keeps_encoder_batch_norm_statistics_frozen(freeze_stats):
  """K6: with fine_tune_after_block=4 the reference updates every encoder BN statistic."""
  model = build_model(10, resnet_depth=18, image_size=32, train_mode='finetune',
                      fine_tune_after_block=4, freeze_bn_stats_when_frozen=freeze_stats)
  model.create_variables()
  before = _moving_statistics(model.resnet_model.variables)
  model(tf.random.uniform([4, 32, 32, 3], seed=4), training=True)
  changed = _changed(before, _moving_statistics(model.resnet_model.variables))
  assert len(changed) == 42  # ResNet-18: 21 encoder BN layers x (mean, variance)
  assert not any(changed) if freeze_stats else all(changed)


def test_unused_projection_layers_are_frozen_in_finetune():
  """K7: with ft_proj_selector=0 the projection head gets no gradient in the reference, but
  stays trainable (warnings, weight decay) and its BN statistics drift."""
  model = build_model(10, resnet_depth=18, image_size=32, train_mode='finetune')
  model.create_variables()
  head = _projection_head_variables(model)
  assert not any(v.name.startswith('projection_head') for v in model.trainable_variables)
  assert any(v.name.startswith('head_supervised') for v in model.trainable_variables)
  before = _moving_statistics(head)
  model(tf.random.uniform([4, 32, 32, 3], seed=5), training=True)
  assert not any(_changed(before, _moving_statistics(head)))

  selector_two = build_model(10, resnet_depth=18, image_size=32, train_mode='finetune',
                             ft_proj_selector=2).create_variables()
  trainable = {v.name.split('/')[1] for v in selector_two.trainable_variables
               if v.name.startswith('projection_head')}
  assert trainable == {'nl_0', 'nl_1'}


def test_logits_by_ft_proj_selector_are_each_selectors_logits_sup():
  """One encoder pass gives what a model built with each ft_proj_selector returns as logits_sup
  (how a SavedModel's selector is decided without building a model per candidate)."""
  images = tf.random.uniform([2, 8, 8, 3], seed=7)
  models = [build_model(10, resnet_depth=18, image_size=8, train_mode='finetune',
                        ft_proj_selector=selector).create_variables() for selector in (0, 1, 2)]
  source = object_keys(model=models[0])
  for model in models[1:]:  # the same weights, matched by checkpoint key
    for key, variable in object_keys(model=model).items():
      variable.assign(source[key])
  by_selector = models[0].logits_by_ft_proj_selector(images, [0, 1, 2])
  outputs = [model.call_with_endpoints(images)['logits_sup'].numpy() for model in models]
  assert not np.allclose(outputs[0], outputs[1]) and not np.allclose(outputs[1], outputs[2])
  for selector, expected in enumerate(outputs):
    np.testing.assert_array_equal(by_selector[selector].numpy(), expected)


def test_projection_head_linear_mode_works():
  """K3: the reference's linear head returns None and the model crashes."""
  model = build_model(10, resnet_depth=18, image_size=32, proj_head_mode='linear',
                      ft_proj_selector=-1, use_blur=False)
  projection, logits = model(tf.random.uniform([2, 32, 32, 6]), training=True)
  assert projection.shape == [4, 128] and logits.shape == [4, 10]
  assert sorted(v.name.split('/')[-1] for v in _projection_head_variables(model)) == [
      'gamma:0', 'kernel:0', 'moving_mean:0', 'moving_variance:0']  # BN without beta


def test_projection_head_none_mode_returns_the_encoder_output_for_any_batch():
  """K4: the reference unpacks a single tensor (wrong rows for a 2-row batch, crash otherwise)."""
  model = build_model(10, resnet_depth=18, image_size=32, proj_head_mode='none')
  for batch in (1, 2, 3):
    endpoints = model.call_with_endpoints(tf.random.uniform([batch, 32, 32, 3]))
    np.testing.assert_array_equal(endpoints['proj_head_output'], endpoints['final_avg_pool'])
    assert endpoints['logits_sup'].shape == [batch, 10]


def test_supervised_head_exists_before_restoring():
  """K5: zero_init_logits_layer needs the head's weights to exist right after construction."""
  model = build_model(10, resnet_depth=18, image_size=32, train_mode='finetune')
  model.create_variables()
  assert [v.shape.as_list() for v in model.supervised_head.trainable_weights] == [[512, 10], [10]]


def test_endpoints_do_not_depend_on_keras_auto_names():
  """K11: the reference looks tensors up by graph name, which breaks for a second model."""
  build_model(10, resnet_depth=18, image_size=32).create_variables()
  second = build_model(10, resnet_depth=18, image_size=32)
  assert _endpoint_shapes(second, 32) == _expected_endpoint_shapes(18, 32)
  assert second.resnet_model.name != 'resnet'  # Keras uniquified it: resnet_1, ...


def test_pretraining_model_without_linear_eval_has_no_supervised_head():
  model = build_model(None, resnet_depth=18, image_size=32, lineareval_while_pretraining=False)
  projection, logits = model(tf.zeros([2, 32, 32, 6]), training=False)
  assert logits is None and projection.shape == [4, 128]
  assert 'logits_sup' not in model.call_with_endpoints(tf.zeros([2, 32, 32, 3]))


def test_blur_can_be_switched_off_in_training_mode():
  """K25: exports call the model with training=True but must never blur."""
  model = build_model(10, resnet_depth=18, image_size=32, use_blur=True)
  images = tf.random.uniform([8, 32, 32, 6], seed=6)
  model.create_variables()
  first, _ = model(images, training=True, blur=False)
  second, _ = model(images, training=True, blur=False)
  np.testing.assert_array_equal(first, second)
  tf.random.set_seed(7)
  blurred, _ = model(images, training=True)
  assert not np.allclose(blurred, first)
