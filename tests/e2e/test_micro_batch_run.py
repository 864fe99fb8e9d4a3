"""--micro_batch_size through run(config): exact resume; the per-replica check before writing."""

import logging
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.training.runner import run
from simclr_tf2.config import Config
from simclr_tf2.errors import ConfigError

TINY = dict(dataset='digits', resnet_depth=18, image_size=8, train_batch_size=16,
            micro_batch_size=4, global_bn=False, checkpoint_steps=2, use_tpu=False, seed=0,
            mode='train', proj_out_dim=16)


def _values(model_dir, step):
  reader = tf.train.load_checkpoint(os.path.join(model_dir, f'ckpt-{step}'))
  return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
          if key != '_CHECKPOINTABLE_OBJECT_GRAPH'}


def test_chunked_run_resumed_halfway_equals_the_uninterrupted_run(tmp_path, caplog):
  whole, halves = str(tmp_path / 'whole'), str(tmp_path / 'halves')
  config = Config(**dict(TINY, checkpoint_steps=1), train_steps=2, model_dir=whole)
  # One device: a second MirroredStrategy in this process would clash with conftest's.
  one_device = tf.distribute.get_strategy()
  run(config, one_device, export=False)
  # What a run stopped after its first checkpoint leaves: the folder without ckpt-2.
  shutil.copytree(whole, halves, ignore=shutil.ignore_patterns('ckpt-2.*'))
  tf.compat.v1.train.update_checkpoint_state(halves, os.path.join(halves, 'ckpt-1'))
  caplog.set_level(logging.INFO)
  run(config.replace(model_dir=halves), one_device, export=False)
  assert f'Resumed from {os.path.join(halves, "ckpt-1")}' in caplog.messages
  expected, actual = _values(whole, 2), _values(halves, 2)
  assert actual.keys() == expected.keys()
  for key, value in expected.items():  # blur seeded per (step, chunk): bit for bit
    if '/moving_' in key:
      # Local (--global_bn=false) moving statistics are sync-on-read: their checkpointed value
      # can differ in the last float32 bit after a resume, unchunked runs alike.
      np.testing.assert_allclose(actual[key], value, rtol=1e-6, atol=1e-7, err_msg=key)
    else:
      np.testing.assert_array_equal(actual[key], value, err_msg=key)


def test_micro_batch_larger_than_the_per_replica_batch_fails_before_writing(
    two_replica_strategy, tmp_path):
  model_dir = tmp_path / 'bad'
  config = Config(**{**TINY, 'micro_batch_size': 16}, train_steps=2, model_dir=str(model_dir))
  with pytest.raises(ConfigError, match=r'--micro_batch_size=16 does not divide the '
                     r'per-replica batch of 8 images'):
    run(config, strategy=two_replica_strategy)
  assert not model_dir.exists()
