"""SavedModel export (K10-K13, K25, K32): outputs, signature, gradients, variables.

Layout: docs/architecture-notes.md, "SavedModel layout". Kn: docs/differences.md.
"""

import logging
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from absl import logging as absl_logging

from export_cases import (EXPORTED_CASES, TF_TOLERANCE, assert_endpoints_close, build_case,
                          exported_case, images, loaded_case)
from golden_data import GOLDEN_CONFIGS, NUM_CLASSES, cases, read_keys
from simclr_tf2.network import export
from simclr_tf2.architecture import SLOT_MARKER
from simclr_tf2.network.checkpoint import object_keys
from simclr_tf2.network.model import ENDPOINT_NAMES, build_model

def _size(name):
  return GOLDEN_CONFIGS[name]['image_size']


# Fast subset: ResNet-18 (each export of a ResNet-50 costs tens of seconds on a CPU).
@pytest.mark.parametrize('name', cases(EXPORTED_CASES, fast={'r18_cifar_pretrain_lars'}))
def test_loaded_call_and_serving_signature_equal_keras_model(name):
  model, _ = exported_case(name)
  loaded = loaded_case(name)
  x = images(_size(name))
  expected = model.call_with_endpoints(x, training=False)
  assert list(expected) == list(ENDPOINT_NAMES)
  assert_endpoints_close(loaded(x, trainable=False), expected, TF_TOLERANCE)
  serving = loaded.signatures['serving_default']
  assert_endpoints_close(serving(images=x), expected, TF_TOLERANCE)


@pytest.mark.parametrize('name', cases(EXPORTED_CASES, fast={'r18_cifar_pretrain_lars'}))
def test_saved_model_variables_have_training_checkpoint_keys(name):
  model, export_dir = exported_case(name)
  values = export.loaded_model_variables(loaded_case(name))
  golden = {k: s for k, s in read_keys(name).items()
            if k.startswith('model/') and SLOT_MARKER not in k}
  assert {k: list(v.shape) for k, v in values.items()} == golden
  for key, variable in object_keys(model=model).items():
    np.testing.assert_array_equal(values[key], variable.numpy(), err_msg=key)
  if name == EXPORTED_CASES[0]:  # the directory-based entry point gives the same result
    assert sorted(export.read_saved_model_variables(export_dir)) == sorted(values)


def test_gradients_through_loaded_training_call():
  name = 'r18_cifar_pretrain_lars'  # the custom-gradient ops (sync BN) are in every model
  model, export_dir = exported_case(name)
  loaded = tf.saved_model.load(export_dir)  # fresh copy: trainable=True updates BN statistics
  variables = loaded.trainable_variables_list
  assert len(variables) == len(model.trainable_variables) > 0  # K32: not empty
  x = images(_size(name))
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(x)
    outputs = loaded(x, trainable=True)
    loss = (tf.reduce_sum(tf.square(outputs['proj_head_output'])) +
            tf.reduce_sum(tf.square(outputs['logits_sup'])))
  for gradients in (tape.gradient(loss, variables), [tape.gradient(loss, x)]):
    assert all(g is not None for g in gradients)
    assert all(np.all(np.isfinite(g)) for g in gradients)
    assert sum(float(tf.reduce_sum(tf.abs(g))) for g in gradients) > 0


def test_training_call_of_pretrain_export_is_not_blurred():
  """K25: the reference blurs inputs of an exported pretraining model called with trainable=True."""
  name = 'r18_cifar_pretrain_lars'
  model, export_dir = exported_case(name)
  assert model.simclr_config.use_blur and model.simclr_config.train_mode == 'pretrain'
  loaded = tf.saved_model.load(export_dir)
  x = images(_size(name), batch=4)
  statistics = [v.numpy() for v in model.non_trainable_variables]
  expected = model.call_with_endpoints(x, training=True)  # blur=False by default
  for variable, value in zip(model.non_trainable_variables, statistics):
    variable.assign(value)  # the cached model must keep its inference statistics
  for _ in range(3):  # blur (if present) would pick a new random sigma per call
    # Batch statistics of 4 samples amplify float32 noise in the projection head; a blurred
    # input changes the outputs by far more than 1e-3.
    assert_endpoints_close(loaded(x, trainable=True), expected, 1e-3)


def test_export_for_step_without_supervised_head_replaces_and_prunes(tmp_path):
  """K10 (no logits_sup), replacing an existing export of the step, keep_hub_module_max."""
  model = build_case('r18_cifar_pretrain_lars', lineareval_while_pretraining=False)
  root = tmp_path / 'saved_model'
  for step in ('1', '2', '5', '10', 'notes'):
    (root / step).mkdir(parents=True)
    (root / step / 'stale').write_text('old export')

  path = export.export_for_step(model, str(tmp_path), global_step=5, keep_hub_module_max=2)

  assert path == str(root / '5')
  assert sorted(os.listdir(root)) == ['10', '5', 'notes']  # no temporary directories left
  assert not (root / '5' / 'stale').exists() and (root / '5' / 'saved_model.pb').exists()
  loaded = tf.saved_model.load(path)
  x = images(32)
  expected = model.call_with_endpoints(x, training=False)
  assert 'logits_sup' not in expected
  assert_endpoints_close(loaded(x, trainable=False), expected, TF_TOLERANCE)
  assert_endpoints_close(loaded.signatures['serving_default'](images=x), expected, TF_TOLERANCE)


def test_prune_exports_keeps_all_when_max_is_not_positive(tmp_path):
  for step in ('3', '7', '20'):
    (tmp_path / step).mkdir()
  export.prune_exports(str(tmp_path), 0)
  assert sorted(os.listdir(tmp_path)) == ['20', '3', '7']
  export.prune_exports(str(tmp_path), 1)
  assert os.listdir(tmp_path) == ['20']


def test_failed_export_keeps_previous_export(tmp_path, monkeypatch):
  target = tmp_path / 'export'
  target.mkdir()
  (target / 'saved_model.pb').write_text('previous export')

  def fail_midway(obj, export_dir, **kwargs):
    os.makedirs(export_dir)
    open(os.path.join(export_dir, 'saved_model.pb'), 'w').close()
    raise OSError('disk full')

  monkeypatch.setattr(tf.saved_model, 'save', fail_midway)
  model = build_model(NUM_CLASSES, resnet_depth=18, image_size=32)
  with pytest.raises(OSError, match='disk full'):
    export.export_saved_model(model, str(target))
  assert os.listdir(tmp_path) == ['export']
  assert (target / 'saved_model.pb').read_text() == 'previous export'


@pytest.mark.parametrize('replicas', [1, 2])
def test_export_logs_nothing_about_the_model(replicas, two_replica_strategy, tmp_path, caplog):
  """Issue 14: no renamed signature inputs (captured variables), no Keras serialisation notes,
  no warnings; TensorFlow's routine lines (fingerprint, sharding callback) may remain."""
  strategy = two_replica_strategy if replicas == 2 else tf.distribute.get_strategy()
  with strategy.scope():
    model = build_case('r18_cifar_pretrain_lars')
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.INFO)
  try:
    with caplog.at_level(logging.INFO):
      export.export_saved_model(model, str(tmp_path / 'export'))
  finally:
    absl_logging.set_verbosity(verbosity)
  messages = [record.getMessage() for record in caplog.records]
  assert any('fingerprint' in message for message in messages)  # INFO records were captured
  about_the_model = [message for message in messages
                     if re.search(r'renamed|serializ|not built|input name', message)]
  assert not about_the_model
  assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
