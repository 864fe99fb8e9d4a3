"""Strategy choice: TPU with a clear error when none is reachable (K31), multi-worker from
TF_CONFIG, MirroredStrategy otherwise.

Kn: defect numbers of the official code, listed in docs/differences.md.
"""

import json

import pytest
import tensorflow as tf

from simclr_tf2 import train
from simclr_tf2.config import Config


class _StandIn:
  num_replicas_in_sync = 1

  def __init__(self, kind):
    self.kind = kind


def test_unreachable_tpu_is_a_one_line_error():
  with pytest.raises(train.TrainingError) as error:
    train.build_strategy(Config(use_tpu=True, tpu_name='no-such-tpu-here'))
  message = str(error.value)
  assert '--use_tpu=false' in message and '\n' not in message


@pytest.mark.parametrize('tf_config,expected', [
    ({'cluster': {'worker': ['localhost:1', 'localhost:2']}, 'task': {'type': 'worker', 'index': 0}},
     'multi_worker'),
    ({'cluster': {'worker': ['localhost:1']}, 'task': {'type': 'worker', 'index': 0}}, 'mirrored'),
    (None, 'mirrored')])
def test_tf_config_with_several_workers_selects_multi_worker(monkeypatch, tf_config, expected):
  monkeypatch.setattr(train, '_STRATEGIES', {})
  # Stand-ins: creating real strategies here would start collectives in the test process.
  monkeypatch.setattr(tf.distribute, 'MultiWorkerMirroredStrategy',
                      lambda: _StandIn('multi_worker'))
  monkeypatch.setattr(tf.distribute, 'MirroredStrategy', lambda: _StandIn('mirrored'))
  if tf_config is None:
    monkeypatch.delenv('TF_CONFIG', raising=False)
  else:
    monkeypatch.setenv('TF_CONFIG', json.dumps(tf_config))
  assert train.build_strategy(Config(use_tpu=False)).kind == expected


def test_strategy_is_reused_within_a_process(monkeypatch):
  """Two runs in one process must not build two Mirrored strategies (collective key clash)."""
  monkeypatch.setattr(train, '_STRATEGIES', {})
  monkeypatch.setattr(tf.distribute, 'MirroredStrategy', lambda: _StandIn('mirrored'))
  monkeypatch.delenv('TF_CONFIG', raising=False)
  assert train.build_strategy(Config(use_tpu=False)) is train.build_strategy(Config(use_tpu=False))
