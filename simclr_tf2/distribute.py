"""Which tf.distribute strategy a run uses, and what each process of it may write.

One TPU, several GPUs or CPUs of one machine (MirroredStrategy), or several machines
(MultiWorkerMirroredStrategy from TF_CONFIG or a SLURM job step). Only the chief process writes
into model_dir; the other workers save into scratch directories (see scratch_dir).
"""

import contextlib
import json
import logging
import os
import shutil
import tempfile
from typing import Mapping, Optional

import tensorflow as tf

from simclr_tf2.config import Config
from simclr_tf2.errors import TrainingError, one_line

MAX_SLURM_TASKS_PER_NODE = 1024  # on CPU nodes (see slurm_cluster_resolver)
_STRATEGIES = {}  # build_strategy's per-process strategies, by kind


def strategy_kind(config: Config, tf_config: Optional[str],
                  environ: Optional[Mapping[str, str]] = None) -> str:
  """'tpu', 'multi_worker' (a TF_CONFIG cluster of several workers), 'slurm' (no TF_CONFIG, in
  a SLURM job step of several tasks, i.e. under `srun`) or 'mirrored'.

  `environ`: the process environment (default: none, i.e. no SLURM).
  """
  if config.use_tpu:
    return 'tpu'
  if tf_config:
    cluster = json.loads(tf_config).get('cluster', {})
    multi_worker = len(cluster.get('worker', [])) + len(cluster.get('chief', [])) > 1
    return 'multi_worker' if multi_worker else 'mirrored'
  environ = environ or {}
  if 'SLURM_PROCID' in environ and int(environ.get('SLURM_STEP_NUM_TASKS', '1')) > 1:
    return 'slurm'
  return 'mirrored'


def slurm_cluster_resolver() -> tf.distribute.cluster_resolver.SlurmClusterResolver:
  """The cluster of this SLURM job step: one worker per task, ports 8888, 8889, ... per node.

  On GPU nodes TensorFlow shares each node's GPUs out among its tasks (it sets
  CUDA_VISIBLE_DEVICES). It cannot count zero GPUs (no task would get an address), so on CPU
  nodes (CUDA_VISIBLE_DEVICES empty, or unset without nvidia-smi) each task gets a placeholder
  GPU id that is never applied.
  """
  visible = os.environ.get('CUDA_VISIBLE_DEVICES')
  if visible or (visible is None and shutil.which('nvidia-smi')):
    return tf.distribute.cluster_resolver.SlurmClusterResolver()
  return tf.distribute.cluster_resolver.SlurmClusterResolver(
      gpus_per_node=MAX_SLURM_TASKS_PER_NODE, gpus_per_task=1, auto_set_gpu=False)


def build_strategy(config: Config):
  """TPUStrategy, MultiWorkerMirroredStrategy (TF_CONFIG with several workers, or a SLURM job
  step of several tasks) or Mirrored; see strategy_kind.

  One Mirrored strategy per process: a second one reuses the first one's collective instance
  keys and its all-reduces (sync BN) then fail, e.g. on a second run() in a notebook. Pass your
  own strategy to run() / SimCLRTask to use another one.
  """
  if config.use_tpu:
    try:
      resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
          tpu=config.tpu_name or config.master, zone=config.tpu_zone, project=config.gcp_project)
      tf.config.experimental_connect_to_cluster(resolver)
      topology = tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, OSError, tf.errors.OpError) as error:
      raise TrainingError(f'no TPU reachable ({one_line(error)}); '
                          'pass --use_tpu=false to train on GPUs or the CPU') from None
    logging.info('TPU topology: %d tasks, %d TPUs per task', topology.num_tasks,
                 topology.num_tpus_per_task)
    return tf.distribute.TPUStrategy(resolver)
  kind = strategy_kind(config, os.environ.get('TF_CONFIG'), os.environ)
  if kind not in _STRATEGIES:
    if kind == 'slurm':
      _STRATEGIES[kind] = tf.distribute.MultiWorkerMirroredStrategy(
          cluster_resolver=slurm_cluster_resolver())
    elif kind == 'multi_worker':
      _STRATEGIES[kind] = tf.distribute.MultiWorkerMirroredStrategy()
    else:
      _STRATEGIES[kind] = tf.distribute.MirroredStrategy()
  strategy = _STRATEGIES[kind]
  logging.info('Running on %d replica(s) with %s', strategy.num_replicas_in_sync,
               type(strategy).__name__)
  return strategy


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this process writes model_dir's checkpoints, results and exports: always, except
  on the non-chief workers of a multi-worker strategy."""
  return strategy.extended.should_checkpoint


@contextlib.contextmanager
def scratch_dir(strategy: tf.distribute.Strategy, model_dir: str):
  """model_dir on the chief; elsewhere a temporary directory, deleted on exit.

  Every worker must run each save (saving can read variables with collective ops), but only
  the chief's may land in model_dir.
  """
  if is_chief(strategy):
    yield model_dir
    return
  directory = tempfile.mkdtemp(prefix='simclr_worker_')
  try:
    yield directory
  finally:
    shutil.rmtree(directory, ignore_errors=True)




def describe(strategy: tf.distribute.Strategy) -> str:
  """The console header's device field: replicas, strategy kind, this worker's place in a
  cluster and its devices, e.g. `2 replicas (MultiWorkerMirroredStrategy, worker 0): CPU:0`."""
  kind = type(strategy).__name__.lstrip('_')  # _DefaultDistributionStrategy: none chosen
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is not None and resolver.task_type:
    kind += f', {resolver.task_type} {resolver.task_id}'
  try:
    devices = [name.rsplit('device:', 1)[-1] for name in strategy.extended.worker_devices]
  except (AttributeError, RuntimeError):
    devices = []
  replicas = strategy.num_replicas_in_sync
  return (f'{replicas} replica{"s" if replicas != 1 else ""} ({kind})' +
          (f': {", ".join(devices)}' if devices else ''))
