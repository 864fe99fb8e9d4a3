"""Strategy choice: TPU with a clear error when none is reachable (K31), multi-worker from
TF_CONFIG, MirroredStrategy otherwise."""

import json

import pytest
import tensorflow as tf

from simclr_tf2 import train
from simclr_tf2.config import Config


def test_unreachable_tpu_is_a_one_line_error():
  with pytest.raises(train.TrainingError) as error:
    train.build_strategy(Config(use_tpu=True, tpu_name='no-such-tpu-here'))
  message = str(error.value)
  assert '--use_tpu=false' in message and '\n' not in message


@pytest.mark.parametrize('tf_config,expected', [
    ({'cluster': {'worker': ['localhost:1', 'localhost:2']}, 'task': {'type': 'worker', 'index': 0}},
     'multi_worker'),
    ({'cluster': {'chief': ['localhost:1'], 'worker': ['localhost:2']},
      'task': {'type': 'chief', 'index': 0}}, 'multi_worker'),
    ({'cluster': {'worker': ['localhost:1']}, 'task': {'type': 'worker', 'index': 0}}, 'mirrored'),
    (None, 'mirrored')])
def test_tf_config_with_several_workers_selects_multi_worker(tf_config, expected):
  tf_config = None if tf_config is None else json.dumps(tf_config)
  assert train.strategy_kind(Config(use_tpu=False), tf_config) == expected
  assert train.strategy_kind(Config(use_tpu=True), tf_config) == 'tpu'


def test_strategy_is_reused_within_a_process():
  """Two runs in one process must not build two Mirrored strategies (collective key clash)."""
  first = train.build_strategy(Config(use_tpu=False))
  assert isinstance(first, tf.distribute.MirroredStrategy)
  assert train.build_strategy(Config(use_tpu=False)) is first
