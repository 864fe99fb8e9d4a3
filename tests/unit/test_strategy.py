"""Strategy choice: TPU with a clear error when none is reachable (K31), multi-worker from
TF_CONFIG, MirroredStrategy otherwise.

Kn: defect numbers of the official code, listed in docs/differences.md.
"""

import json
import os

import pytest
import tensorflow as tf

from simclr_tf2.distribute import (build_strategy, lost_worker_error, slurm_cluster_resolver,
                                   strategy_kind)
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


class TwoWorkerStandIn(tf.distribute.MultiWorkerMirroredStrategy):
  """What lost_worker_error reads of a two-worker strategy, its cluster resolver, without starting
  one (a real one waits for its peer). The process test of a killed worker kills the non-chief
  (tests/e2e/test_multiworker_command.py); the side that loses its chief is checked here."""

  def __init__(self, task_id):  # pylint: disable=super-init-not-called
    self.resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec({'worker': ['10.0.0.1:2222', '10.0.0.2:2222']}),
        task_type='worker', task_id=task_id)

  @property
  def cluster_resolver(self):
    return self.resolver


# Texts shaped like TensorFlow's (the coordination service runs on worker 0, the chief).
@pytest.mark.parametrize('task_id,error,expected', [
    (1, tf.errors.UnavailableError(None, None, 'failed to send a heartbeat to the coordination '
                                   'service: Socket closed'),
     'lost worker 0 (10.0.0.1:2222): its connection closed; worker 1 stops too. Start every '
     'worker again with the same command: training resumes from the last checkpoint'),
    (0, tf.errors.UnavailableError(None, None, 'Task /job:worker/replica:0/task:1 stopped sending '
                                   'heartbeats; collective ops aborted'),
     'lost worker 1 (10.0.0.2:2222): it stopped sending heartbeats; worker 0 stops too. Start '
     'every worker again with the same command: training resumes from the last checkpoint'),
])
def test_a_lost_worker_is_named_from_either_side(task_id, error, expected):
  assert str(lost_worker_error(TwoWorkerStandIn(task_id), error)) == expected


def test_other_errors_and_one_process_runs_name_no_lost_worker():
  unavailable = tf.errors.UnavailableError(None, None, 'Socket closed')
  assert lost_worker_error(TwoWorkerStandIn(0), tf.errors.InvalidArgumentError(
      None, None, 'Socket closed')) is None
  assert lost_worker_error(TwoWorkerStandIn(0), ValueError('Socket closed')) is None
  assert lost_worker_error(tf.distribute.get_strategy(), unavailable) is None
