"""Strategy choice: TPU with a clear error when none is reachable (K31), multi-worker from
TF_CONFIG, MirroredStrategy otherwise.

Kn: defect numbers of the official code, listed in docs/differences.md.
"""

import json
import os

import pytest
import tensorflow as tf

from simclr_tf2.distribute import build_strategy, slurm_cluster_resolver, strategy_kind
from simclr_tf2.errors import ClusterError, TrainingError
from simclr_tf2.config import Config


def test_unreachable_tpu_is_a_one_line_error():
  with pytest.raises(TrainingError) as error:
    build_strategy(Config(use_tpu=True, tpu_name='no-such-tpu-here'))
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
  assert strategy_kind(Config(use_tpu=False), tf_config) == expected
  assert_tpu_kind(tf_config, expected)


def assert_tpu_kind(tf_config, kind_without_tpu, environ=None):
  """--use_tpu: a TPU run, unless TF_CONFIG names a cluster of several tasks (an error)."""
  if kind_without_tpu == 'multi_worker':
    with pytest.raises(ClusterError, match='--use_tpu=true with a TF_CONFIG cluster'):
      strategy_kind(Config(use_tpu=True), tf_config, environ)
  else:
    assert strategy_kind(Config(use_tpu=True), tf_config, environ) == 'tpu'


def test_strategy_is_reused_within_a_process():
  """Two runs in one process must not build two Mirrored strategies (collective key clash)."""
  first = build_strategy(Config(use_tpu=False))
  assert isinstance(first, tf.distribute.MirroredStrategy)
  assert build_strategy(Config(use_tpu=False)) is first


SLURM_STEP = {'SLURM_JOB_ID': '7', 'SLURM_PROCID': '1', 'SLURM_STEP_NUM_TASKS': '2',
              'SLURM_STEP_NODELIST': 'node[01-02]', 'SLURM_STEP_TASKS_PER_NODE': '1(x2)'}


@pytest.mark.parametrize('tf_config,environ,expected', [
    (None, SLURM_STEP, 'slurm'),
    (None, {**SLURM_STEP, 'SLURM_STEP_NUM_TASKS': '1'}, 'mirrored'),  # srun -n 1
    (None, {'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '4'}, 'mirrored'),  # the batch script itself
    ({'cluster': {'worker': ['localhost:1']}, 'task': {'type': 'worker', 'index': 0}},
     SLURM_STEP, 'mirrored'),  # an explicit TF_CONFIG wins
    ({'cluster': {'worker': ['localhost:1', 'localhost:2']}, 'task': {'type': 'worker',
                                                                     'index': 0}},
     SLURM_STEP, 'multi_worker'),
    (None, {}, 'mirrored')])
def test_a_slurm_step_of_several_tasks_selects_slurm(tf_config, environ, expected):
  tf_config = None if tf_config is None else json.dumps(tf_config)
  assert strategy_kind(Config(use_tpu=False), tf_config, environ) == expected
  assert_tpu_kind(tf_config, expected, environ)


@pytest.mark.parametrize('nodes,tasks_per_node,visible_gpus,expected_workers,own_gpus', [
    ('node[01-02]', '1(x2)', '', ['node01:8888', 'node02:8888'], ''),  # CPU nodes: untouched
    ('node01', '2', '0,1', ['node01:8888', 'node01:8889'], '1'),  # task 1 gets GPU 1
])
def test_slurm_cluster_resolver_makes_one_worker_per_task(monkeypatch, nodes, tasks_per_node,
                                                          visible_gpus, expected_workers,
                                                          own_gpus):
  for name, value in {**SLURM_STEP, 'SLURM_STEP_NODELIST': nodes,
                      'SLURM_STEP_TASKS_PER_NODE': tasks_per_node,
                      'CUDA_VISIBLE_DEVICES': visible_gpus}.items():
    monkeypatch.setenv(name, value)
  resolver = slurm_cluster_resolver()
  assert resolver.cluster_spec().as_dict() == {'worker': expected_workers}
  assert (resolver.task_type, resolver.task_id) == ('worker', 1)
  assert os.environ['CUDA_VISIBLE_DEVICES'] == own_gpus


@pytest.mark.parametrize('reserved,expected_workers', [
    ('12000-12001', ['node01:12000', 'node01:12001']),  # srun --resv-ports: the step's ports
    ('', ['node01:8888', 'node01:8889'])])
def test_slurm_workers_listen_on_the_ports_srun_reserved(monkeypatch, reserved,
                                                         expected_workers):
  for name, value in {**SLURM_STEP, 'SLURM_STEP_NODELIST': 'node01',
                      'SLURM_STEP_TASKS_PER_NODE': '2', 'CUDA_VISIBLE_DEVICES': '',
                      'SLURM_STEP_RESV_PORTS': reserved}.items():
    monkeypatch.setenv(name, value)
  assert slurm_cluster_resolver().cluster_spec().as_dict() == {'worker': expected_workers}


def test_a_broken_slurm_step_is_one_line(monkeypatch):
  for name, value in {**SLURM_STEP, 'CUDA_VISIBLE_DEVICES': ''}.items():
    monkeypatch.setenv(name, value)
  monkeypatch.delenv('SLURM_STEP_NODELIST')
  with pytest.raises(ClusterError, match='^cannot read the SLURM job step: ') as error:
    slurm_cluster_resolver()
  assert '\n' not in str(error.value)
