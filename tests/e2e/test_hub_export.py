"""Exports as TensorFlow Hub Reusable SavedModels: `hub.KerasLayer(export,
trainable=True)` fine-tunes the whole encoder, while the official `loaded(x, trainable)` layout
keeps working. Layout: docs/architecture-notes.md, "SavedModel layout"."""

import logging
import warnings

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

with warnings.catch_warnings():  # "pkg_resources is deprecated", from hub's own import
  warnings.simplefilter('ignore', UserWarning)
  import tensorflow_hub as hub  # the `test` extra (needs setuptools<81 for pkg_resources)

from export_cases import assert_endpoints_close, exported_case, images

# One xdist worker runs this module, so its session-scoped runs are built once (module-scoped
# ones were built again when the worker's test order left the module and came back).
pytestmark = pytest.mark.xdist_group('test_hub_export')

CASE = 'r18_cifar_pretrain_lars'  # has the supervised head, so every endpoint is exported
SIZE = 16
# Against the model run as a graph too: eagerly it skips op fusion, which moves deep float32
# activations by ~1e-6 relative (test_export.TF_TOLERANCE).
INFERENCE_TOLERANCE = 1e-6


@pytest.fixture(scope='session')
def exported():
  """(model, export_dir): the session's export of CASE, shared with the export and conversion
  tests (every test here loads it afresh and leaves it unchanged)."""
  return exported_case(CASE)


def inference_endpoints(model, x):
  return tf.function(lambda batch: model.call_with_endpoints(batch, training=False))(x)


def _warnings(caplog):
  return [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


def test_loading_logs_no_unsaved_custom_gradients(exported, caplog):
  _, export_dir = exported
  with caplog.at_level(logging.WARNING):
    tf.saved_model.load(export_dir)
    hub.KerasLayer(export_dir, trainable=True, output_key='final_avg_pool')
  assert not [message for message in _warnings(caplog) if 'custom gradient' in message]


def test_hub_layer_output_equals_model_in_inference(exported):
  model, export_dir = exported
  x = images(SIZE, batch=4)
  expected = inference_endpoints(model, x)
  pooled = hub.KerasLayer(export_dir, trainable=True, output_key='final_avg_pool')
  assert_endpoints_close({'final_avg_pool': pooled(x)},
                         {'final_avg_pool': expected['final_avg_pool']}, INFERENCE_TOLERANCE)
  assert_endpoints_close(hub.KerasLayer(export_dir)(x), expected, INFERENCE_TOLERANCE)


def test_hub_layer_fine_tunes_every_encoder_variable(exported):
  model, export_dir = exported
  layer = hub.KerasLayer(export_dir, trainable=True, output_key='final_avg_pool')
  trainable = {v.name: v.shape for v in layer.trainable_weights}
  assert trainable == {v.name: v.shape for v in model.trainable_variables}
  assert ({v.name for v in layer.non_trainable_weights} ==
          {v.name for v in model.non_trainable_variables})  # BN moving statistics
  # By name, not prefix: `resnet/` becomes `resnet_1/` once another model was built (K11).
  encoder_names = {v.name for v in model.resnet_model.trainable_variables}
  encoder = [v for v in layer.trainable_weights if v.name in encoder_names]
  assert len(encoder) == len(encoder_names) > 0

  inputs = keras.Input([SIZE, SIZE, 3])
  classifier = keras.Model(inputs, keras.layers.Dense(3)(layer(inputs)))
  classifier.compile(optimizer=keras.optimizers.SGD(0.1),
                     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  before = [v.numpy() for v in encoder]
  classifier.train_on_batch(images(SIZE, batch=8), np.arange(8) % 3)
  unchanged = [v.name for v, value in zip(encoder, before) if np.array_equal(v.numpy(), value)]
  assert not unchanged


def test_reference_calls_still_work(exported):
  """The reference's consumers: `loaded(x, trainable=False)` or positional; `training=` is the
  same function under Hub's name."""
  model, export_dir = exported
  loaded = tf.saved_model.load(export_dir)
  x = images(SIZE, batch=4)
  expected = inference_endpoints(model, x)
  for outputs in (loaded(x, trainable=False), loaded(x, False), loaded(x, training=False)):
    assert_endpoints_close(outputs, expected, INFERENCE_TOLERANCE)
  for mode in (True, False):  # both names reach one graph: identical numbers
    by_trainable, by_training = loaded(x, trainable=mode), loaded(x, training=mode)
    for key, value in by_trainable.items():
      np.testing.assert_array_equal(by_training[key], value, err_msg=key)
  assert [v.name for v in loaded.trainable_variables] == [
      v.name for v in loaded.trainable_variables_list]
  assert list(loaded.regularization_losses) == []
  with pytest.raises((TypeError, ValueError)):
    loaded(x, trainable=True, training=True)
