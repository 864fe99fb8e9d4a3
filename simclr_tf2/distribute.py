"""Which tf.distribute strategy a run uses, and what each process of it may write.

One TPU, several GPUs or CPUs of one machine (MirroredStrategy), or several machines
(MultiWorkerMirroredStrategy from TF_CONFIG or a SLURM job step). Only the chief process writes
into model_dir; the other workers save into scratch directories (see scratch_dir).

A cluster's mistakes are one-line ClusterErrors before anything is written: a malformed
TF_CONFIG, a busy port (build_strategy), workers started with different settings
(check_workers_agree); a worker that stops during the run is one too, on the others
(worker_failures).
"""

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
from typing import Iterator, List, Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf

from simclr_tf2.config import Config
from simclr_tf2.errors import ClusterError, TrainingError, one_line
from simclr_tf2.model_dir import make_worker_scratch_dir

MAX_SLURM_TASKS_PER_NODE = 1024  # on CPU nodes (see slurm_cluster_resolver)
SLURM_PORT_BASE = 8888  # SlurmClusterResolver's first port on each node, unless srun reserved some
CLUSTER_JOBS = ('chief', 'worker')  # the task types of a MultiWorkerMirroredStrategy cluster
# Settings that may differ between workers: host-local copies of the same data.
PER_HOST_SETTINGS = frozenset({'data_dir'})
FINGERPRINT_SIZE = 128  # int32s gathered from every worker: the whole config, then per setting
_STRATEGIES = {}  # build_strategy's per-process strategies, by kind
TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host-a:12345", "host-b:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}')


def parse_tf_config(text: str) -> dict:
  """TF_CONFIG as a dict, checked: a JSON object whose `cluster` maps "chief" / "worker" to
  lists of "host:port" (at most one chief), and whose `task` names one of them. A mistake is
  a one-line ClusterError, before any server starts."""
  try:
    value = json.loads(text)
  except ValueError as error:
    raise ClusterError(f'TF_CONFIG is not JSON ({error}); expected e.g. {TF_CONFIG_EXAMPLE}'
                       ) from None
  cluster = value.get('cluster') if isinstance(value, dict) else None
  if not isinstance(cluster, dict) or not cluster:
    raise ClusterError(f'TF_CONFIG has no "cluster"; expected e.g. {TF_CONFIG_EXAMPLE}')
  for job, addresses in cluster.items():
    if job not in CLUSTER_JOBS:
      raise ClusterError(f'TF_CONFIG: cluster job "{job}" is not supported; only '
                         f'{" and ".join(CLUSTER_JOBS)} tasks (every one trains)')
    if not isinstance(addresses, list) or not addresses:
      raise ClusterError(f'TF_CONFIG: cluster "{job}" must be a non-empty list of "host:port"')
    for address in addresses:
      host, _, port = str(address).rpartition(':')
      if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f'TF_CONFIG: {job} address {address!r} is not "host:port"')
  if len(cluster.get('chief', [])) > 1:
    raise ClusterError('TF_CONFIG: a cluster has at most one chief')
  task = value.get('task', {})
  if not isinstance(task, dict):
    raise ClusterError('TF_CONFIG: "task" must be {"type": ..., "index": ...}')
  if num_tasks(cluster) > 1 or task:
    task_type, index = task.get('type'), task.get('index', 0)
    if task_type not in cluster:
      raise ClusterError(f'TF_CONFIG: task type {task_type!r} is not in the cluster '
                         f'({", ".join(cluster)}); set "task": {{"type": ..., "index": ...}}')
    if not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
      raise ClusterError(f'TF_CONFIG: task index {index!r} is out of range: the cluster has '
                         f'{len(cluster[task_type])} {task_type} task(s), indices 0 to '
                         f'{len(cluster[task_type]) - 1}')
  return value


def num_tasks(cluster: Mapping[str, list]) -> int:
  return sum(len(cluster.get(job, [])) for job in CLUSTER_JOBS)


def strategy_kind(config: Config, tf_config: Optional[str],
                  environ: Optional[Mapping[str, str]] = None) -> str:
  """'tpu', 'multi_worker' (a TF_CONFIG cluster of several workers), 'slurm' (no TF_CONFIG, in
  a SLURM job step of several tasks, i.e. under `srun`) or 'mirrored'.

  `environ`: the process environment (default: none, i.e. no SLURM). A malformed TF_CONFIG, or
  one naming several tasks together with --use_tpu, is a ClusterError.
  """
  if tf_config:
    tasks = num_tasks(parse_tf_config(tf_config)['cluster'])
    if config.use_tpu:
      if tasks > 1:
        raise ClusterError(f'--use_tpu=true with a TF_CONFIG cluster of {tasks} tasks: a TPU '
                           'run is one program (TPUStrategy drives every host of the slice); '
                           'unset TF_CONFIG, or pass --use_tpu=false to train on the cluster')
      return 'tpu'
    return 'multi_worker' if tasks > 1 else 'mirrored'
  if config.use_tpu:
    return 'tpu'
  environ = environ or {}
  if 'SLURM_PROCID' in environ and int(environ.get('SLURM_STEP_NUM_TASKS', '1')) > 1:
    return 'slurm'
  return 'mirrored'


def slurm_port_base(environ: Mapping[str, str]) -> int:
  """The first port of each node's tasks: the ports `srun --resv-ports` reserved for the step
  (SLURM_STEP_RESV_PORTS, e.g. `12000-12003`), else 8888."""
  reserved = environ.get('SLURM_STEP_RESV_PORTS')
  if not reserved:
    return SLURM_PORT_BASE
  match = re.match(r'\s*(\d+)', reserved)
  if not match:
    raise ClusterError(f'SLURM_STEP_RESV_PORTS={reserved!r} does not start with a port number')
  return int(match.group(1))


def slurm_cluster_resolver() -> tf.distribute.cluster_resolver.SlurmClusterResolver:
  """The cluster of this SLURM job step: one worker per task, consecutive ports per node from
  slurm_port_base (8888, or the first of the ports `srun --resv-ports` reserved).

  On GPU nodes TensorFlow shares each node's GPUs out among its tasks (it sets
  CUDA_VISIBLE_DEVICES). It cannot count zero GPUs (no task would get an address), so on CPU
  nodes (CUDA_VISIBLE_DEVICES empty, or unset without nvidia-smi) each task gets a placeholder
  GPU id that is never applied.
  """
  port_base = slurm_port_base(os.environ)
  visible = os.environ.get('CUDA_VISIBLE_DEVICES')
  try:
    if visible or (visible is None and shutil.which('nvidia-smi')):
      return tf.distribute.cluster_resolver.SlurmClusterResolver(port_base=port_base)
    return tf.distribute.cluster_resolver.SlurmClusterResolver(
        port_base=port_base, gpus_per_node=MAX_SLURM_TASKS_PER_NODE, gpus_per_task=1,
        auto_set_gpu=False)
  except (RuntimeError, ValueError, KeyError) as error:
    raise ClusterError(f'cannot read the SLURM job step: {one_line(error)}') from None


def own_address(resolver) -> Tuple[str, str]:
  """(`worker 1`, `host:port`): this process' task in its cluster and the address it serves."""
  task = f'{resolver.task_type} {resolver.task_id}'
  return task, resolver.cluster_spec().task_address(resolver.task_type, resolver.task_id)


def check_port_free(address: str, task: str) -> None:
  """A one-line ClusterError if this machine cannot listen on the address' port (TensorFlow
  would only say `Could not start gRPC server`)."""
  port = int(address.rpartition(':')[2])
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no obstacle
    try:
      probe.bind(('', port))
    except OSError as error:
      reason = ('is already in use' if error.errno == errno.EADDRINUSE
                else f'cannot be opened ({error.strerror})')
      raise ClusterError(f'port {port} of {task} ({address}) {reason}: stop what uses it, or '
                         'give this task another port in every worker\'s TF_CONFIG') from None


def _multi_worker_strategy(resolver) -> tf.distribute.MultiWorkerMirroredStrategy:
  """Joins the cluster: waits until every task has started, then returns the strategy."""
  task, address = own_address(resolver)
  check_port_free(address, task)
  try:
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
  except (RuntimeError, ValueError, tf.errors.OpError) as error:
    raise ClusterError(f'{task} ({address}) cannot join the cluster: {one_line(error)}'
                       ) from None


def tpu_looked_for(config: Config) -> str:
  """Where TPUClusterResolver looks for the TPU, as the flags say, for error messages."""
  name = config.tpu_name or config.master
  where = (f'--tpu_name={name}' if config.tpu_name else f'--master={name}') if name else (
      'the TPU_NAME environment variable or this VM\'s own TPU (--tpu_name and --master are '
      'empty)')
  extra = [f'--{flag}={getattr(config, flag)}' for flag in ('tpu_zone', 'gcp_project')
           if getattr(config, flag)]
  return where + (f' ({", ".join(extra)})' if extra else '')


def build_strategy(config: Config):
  """TPUStrategy, MultiWorkerMirroredStrategy (TF_CONFIG with several workers, or a SLURM job
  step of several tasks) or Mirrored; see strategy_kind. Checks what can be checked before a
  server starts (TF_CONFIG, this task's port); see also check_workers_agree.

  One Mirrored strategy per process: a second one reuses the first one's collective instance
  keys and its all-reduces (sync BN) then fail, e.g. on a second run() in a notebook. Pass your
  own strategy to run() / SimCLRTask to use another one.
  """
  kind = strategy_kind(config, os.environ.get('TF_CONFIG'), os.environ)
  if kind == 'tpu':
    try:
      resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
          tpu=config.tpu_name or config.master, zone=config.tpu_zone, project=config.gcp_project)
      tf.config.experimental_connect_to_cluster(resolver)
      topology = tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, OSError, tf.errors.OpError) as error:
      raise TrainingError(f'no TPU reachable at {tpu_looked_for(config)} ({one_line(error)}); '
                          'pass --use_tpu=false to train on GPUs or the CPU') from None
    logging.info('TPU topology: %d tasks, %d TPUs per task', topology.num_tasks,
                 topology.num_tpus_per_task)
    return tf.distribute.TPUStrategy(resolver)
  if kind not in _STRATEGIES:
    if kind == 'slurm':
      _STRATEGIES[kind] = _multi_worker_strategy(slurm_cluster_resolver())
    elif kind == 'multi_worker':
      _STRATEGIES[kind] = _multi_worker_strategy(
          tf.distribute.cluster_resolver.TFConfigClusterResolver())
    else:
      _STRATEGIES[kind] = tf.distribute.MirroredStrategy()
  strategy = _STRATEGIES[kind]
  logging.info('Running on %s', describe(strategy))
  return strategy


def check_one_process(config: Config, command: str) -> None:
  """A one-line ClusterError if the environment asks for a cluster of several processes
  (TF_CONFIG of several tasks, an srun step of several tasks) and `command` runs in one
  process only: each process would see part of the data and write the same files."""
  kind = strategy_kind(config, os.environ.get('TF_CONFIG'), os.environ)
  if kind in ('multi_worker', 'slurm'):
    how = ('unset TF_CONFIG' if kind == 'multi_worker'
           else 'start it outside an srun step of several tasks')
    raise ClusterError(f'{command} runs in one process, not on a cluster of several: {how} '
                       '(only simclr-tf2 training runs on several machines)')


def cluster_tasks(strategy: tf.distribute.Strategy) -> List[Tuple[str, int]]:
  """The (task type, index) of every training process of a multi-worker strategy, chief
  first; [] for a one-process strategy."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
    return []
  spec = resolver.cluster_spec()
  return [(job, index) for job in CLUSTER_JOBS if job in spec.jobs
          for index in range(spec.num_tasks(job))]


def _setting_hash(value) -> int:
  digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=repr).encode()).digest()
  return int.from_bytes(digest[:4], 'little') & 0x7fffffff


def config_fingerprint(config: Config) -> Tuple[List[str], np.ndarray]:
  """(setting names, [FINGERPRINT_SIZE] int32): a hash of every setting that must be equal on
  every worker, then one hash per setting (zero-padded)."""
  settings = {name: value for name, value in sorted(config.to_dict().items())
              if name not in PER_HOST_SETTINGS}
  names = list(settings)
  if len(names) >= FINGERPRINT_SIZE:
    raise ValueError(f'FINGERPRINT_SIZE={FINGERPRINT_SIZE} must exceed the {len(names)} settings')
  vector = np.zeros([FINGERPRINT_SIZE], np.int32)
  vector[0] = _setting_hash(settings)
  vector[1:len(names) + 1] = [_setting_hash(settings[name]) for name in names]
  return names, vector


def check_workers_agree(strategy: tf.distribute.Strategy, config: Config) -> None:
  """Every worker of a multi-worker run must train the same config: gathers each worker's
  config_fingerprint (one collective, which every worker runs before writing anything) and
  raises the same one-line ClusterError on every worker if they differ, naming the settings.
  Nothing to do for a one-process strategy."""
  tasks = cluster_tasks(strategy)
  if len(tasks) < 2:
    return
  names, vector = config_fingerprint(config)
  local = tf.constant(vector[None])
  with worker_failures(strategy):
    gathered = strategy.gather(
        strategy.experimental_distribute_values_from_function(lambda _: local), axis=0).numpy()
  per_worker = gathered[::strategy.num_replicas_in_sync // len(tasks)]  # replicas by worker
  different = [index for index, row in enumerate(per_worker) if row[0] != per_worker[0][0]]
  if not different:
    return
  first = per_worker[different[0]]
  settings = [f'--{name}' for index, name in enumerate(names)
              if first[index + 1] != per_worker[0][index + 1]] or ['the set of settings']
  others = ', '.join(f'{job} {index}' for job, index in (tasks[i] for i in different))
  raise ClusterError(f'the workers were started with different settings: {", ".join(settings)} '
                     f'of {others} differ from {tasks[0][0]} {tasks[0][1]}\'s; start every '
                     'worker with the same flags')


_PEER = re.compile(r'/job:(chief|worker)/(?:replica:\d+/)?task:(\d+)')
_FAILURE_REASONS = (  # what TensorFlow's error text says -> what happened, in a few words
    ('stopped sending heartbeats', 'it stopped sending heartbeats'),
    ('Socket closed', 'its connection closed'),
    ('Connection refused', 'it refused the connection'),
    ('coordination service', 'the coordination service on the chief cannot be reached'),
    ('Deadline Exceeded', 'it did not answer in time'),
)
_CLUSTER_FAILURES = (tf.errors.UnavailableError, tf.errors.AbortedError,
                     tf.errors.DeadlineExceededError, tf.errors.CancelledError)


def lost_worker_error(strategy: tf.distribute.Strategy, error: BaseException
                      ) -> Optional[ClusterError]:
  """The one-line ClusterError naming the lost worker, if `error` is a multi-worker run's
  collective failing because another process stopped; else None."""
  tasks = cluster_tasks(strategy)
  if len(tasks) < 2 or not isinstance(error, tf.errors.OpError):
    return None
  text = error.message or str(error)
  if not (isinstance(error, _CLUSTER_FAILURES) or 'Collective ops is aborted' in text or
          'coordination service' in text):
    return None
  resolver = strategy.cluster_resolver
  me = (resolver.task_type, resolver.task_id)
  lost = []
  for job, index in ((job, int(index)) for job, index in _PEER.findall(text)):
    if (job, index) != me and (job, index) not in lost and (job, index) in tasks:
      lost.append((job, index))
  if not lost and 'coordination service' in text:
    lost = [tasks[0]]  # the chief runs the coordination service
  spec = resolver.cluster_spec()
  names = ', '.join(f'{job} {index} ({spec.task_address(job, index)})' for job, index in lost
                    ) or 'another worker'
  reason = next((why for fragment, why in _FAILURE_REASONS if fragment in text),
                one_line(error, 120))
  return ClusterError(f'lost {names}: {reason}; {me[0]} {me[1]} stops too. Start every worker '
                      'again with the same command: training resumes from the last checkpoint')


@contextlib.contextmanager
def worker_failures(strategy: tf.distribute.Strategy) -> Iterator[None]:
  """Inside the block, a collective failing because another worker of a multi-worker run
  stopped (killed, crashed, unreachable) becomes a one-line ClusterError naming it
  (lost_worker_error). TensorFlow's coordination service notices a dead process within its
  heartbeat timeout (10 s by default) and aborts every collective of the others, so they stop
  instead of waiting forever."""
  try:
    yield
  except tf.errors.OpError as error:
    cluster_error = lost_worker_error(strategy, error)
    if cluster_error is None:
      raise
    raise cluster_error from error


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
  directory = make_worker_scratch_dir()
  try:
    yield directory
  finally:
    shutil.rmtree(directory, ignore_errors=True)


def describe(strategy: tf.distribute.Strategy) -> str:
  """The console header's device field: replicas, strategy kind, this worker's place in a
  cluster and its devices, e.g. `2 replicas (MultiWorkerMirroredStrategy, worker 0 of 2):
  CPU:0`."""
  kind = type(strategy).__name__.lstrip('_')  # _DefaultDistributionStrategy: none chosen
  tasks = cluster_tasks(strategy)
  if tasks:  # the class behind the public name is CollectiveAllReduceStrategy
    resolver = strategy.cluster_resolver
    kind = (f'MultiWorkerMirroredStrategy, {resolver.task_type} {resolver.task_id} of '
            f'{len(tasks)}')
  try:
    devices = [name.rsplit('device:', 1)[-1] for name in strategy.extended.worker_devices]
  except (AttributeError, RuntimeError):
    devices = []
  replicas = strategy.num_replicas_in_sync
  return (f'{replicas} replica{"s" if replicas != 1 else ""} ({kind})' +
          (f': {", ".join(devices)}' if devices else ''))
