"""Models of the golden configurations, exported once per session, and how to compare their
outputs: shared by the export, conversion and embedding tests."""

import functools
import os

import numpy as np
import tensorflow as tf

import session_scratch
from golden_data import GOLDEN_CONFIGS, NUM_CLASSES, REFERENCE_PARITY
from simclr_tf2.network import export
from simclr_tf2.network.model import build_model

# Pretraining configurations (with linear-eval head) exported once per session; shared with
# the conversion tests because each export costs 7-30 s on CPU.
EXPORTED_CASES = ('r18_cifar_pretrain_lars', 'r18_sk_se_cifar_pretrain_lars',
                  'r50_imagenet_pretrain_lars', 'r50_sk_se_imagenet_pretrain_lars')


def randomize_batch_norm(model, seed=0):
  """Non-trivial BN parameters and statistics: with the initial ones BN is (almost) the identity
  in inference and conversion errors in their handling would go unnoticed."""
  rng = np.random.default_rng(seed)
  draws = {'gamma': lambda n: rng.uniform(0.5, 1.5, n), 'beta': lambda n: rng.normal(0, 0.2, n),
           'moving_mean': lambda n: rng.normal(0, 0.2, n),
           'moving_variance': lambda n: rng.uniform(0.5, 2.0, n)}
  for variable in model.variables:
    leaf = variable.name.split('/')[-1].split(':')[0]
    if leaf in draws:
      variable.assign(draws[leaf](variable.shape.as_list()).astype(np.float32))


def images(size, batch=2, seed=1):
  return tf.random.stateless_uniform([batch, size, size, 3], seed=[seed, 0])


def build_case(name, **overrides):
  """A built golden-configuration model with randomised batch norm."""
  model = build_model(NUM_CLASSES, **{**GOLDEN_CONFIGS[name], **REFERENCE_PARITY, **overrides})
  model.create_variables()
  randomize_batch_norm(model)
  return model


@functools.lru_cache(maxsize=None)
def exported_case(name):
  """(model, export_dir) for one of EXPORTED_CASES, exported once per session."""
  model = build_case(name)
  directory = os.path.join(session_scratch.folder('exports'), name)
  return model, export.export_saved_model(model, directory)


@functools.lru_cache(maxsize=None)
def loaded_case(name):
  """The export loaded once for read-only use (callers must not use trainable=True on it)."""
  return tf.saved_model.load(exported_case(name)[1])


# Relative to each endpoint's largest magnitude. The loaded graph equals a tf.function of the
# in-memory model bit for bit in our runs, but eager execution skips graph optimisations (op
# fusion), which moves deep float32 activations by up to ~1e-6 relative.
TF_TOLERANCE = 1e-5


def assert_endpoints_close(actual, expected, tolerance):
  """Max abs error of every endpoint <= tolerance * max(1, max |expected|); same keys."""
  assert sorted(actual) == sorted(expected)
  for key, value in expected.items():
    value = np.asarray(value)
    scale = max(1.0, float(np.max(np.abs(value))))
    error = float(np.max(np.abs(np.asarray(actual[key]) - value)))
    assert error <= tolerance * scale, f'{key}: max error {error:.3g} (scale {scale:.3g})'
