"""Several processes through the user's command, `python -m simclr_tf2.run`, over loopback.

Every run trains with the flags of the loopback cluster of docs/distributed.md, and every
checkpoint is compared with the one-process reference: MirroredStrategy over two logical CPUs
with the same flags (1e-6; bit for bit for that process killed and resumed).

* `kill -9` of a worker: the tasks of a faked SLURM job step on localhost (SlurmClusterResolver)
  train; the non-chief is killed once the chief has saved ckpt-2, and the chief stops within
  LOST_WORKER_SECONDS with one `error:` line naming it, leaving ckpt-2 and no lock. Starting both
  again by the ```bash block of docs/distributed.md (TF_CONFIG), run by bash as written (free
  ports and the model_dir aside), resumes from ckpt-2 and ends with the uninterrupted run's
  weights. Only the chief writes into model_dir. (A killed chief, the other direction, is not
  started here: the same detection on the other side, see docs/testing.md.)
* The one-process reference stopped after its first checkpoint (its folder without the later
  files) and started again resumes and ends bit-identical to the uninterrupted run.
* Mistakes are one-line errors before anything is written: a malformed TF_CONFIG, a task index
  out of range, a busy port, --use_tpu with TF_CONFIG, workers with different flags, no TPU.

The one-process reference lays its input out as the workers do: a seeded run's data stream is a
function of (seed, input pipeline), and a worker with one replica is one pipeline, so the
reference's MirroredStrategy builds one pipeline per replica (InputReplicationMode.PER_REPLICA).
"""

import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from golden_data import REPO
from simclr_tf2 import run as run_command
from simclr_tf2.model_dir import WORKER_SCRATCH_PREFIX

# One xdist worker runs this module, so its session-scoped runs are built once (module-scoped
# ones were built again when the worker's test order left the module and came back).
pytestmark = pytest.mark.xdist_group('test_multiworker_command')

TIMEOUT = 600  # seconds for any one process (generous: the 2 CPUs are shared)
LOST_WORKER_SECONDS = 60  # docs/distributed.md: a dead worker stops the others within this
TOLERANCE = 1e-6
PAGE = REPO / 'docs' / 'distributed.md'
DOC_PORTS = ('23456', '23457')
DOC_MODEL_DIR = '/tmp/simclr_two_workers'


def loopback_block():
  """The ```bash block of docs/distributed.md that starts the loopback cluster."""
  blocks = [block for block in re.findall(r'```bash\n(.*?)```', PAGE.read_text(encoding='utf-8'),
                                          flags=re.S) if 'CLUSTER=' in block]
  assert len(blocks) == 1, 'docs/distributed.md: one ```bash block sets CLUSTER='
  for text in (*DOC_PORTS, DOC_MODEL_DIR):
    assert text in blocks[0], f'the loopback block no longer uses {text}: update this test'
  return blocks[0]


# Every run here trains with the documented cluster's flags (its own model_dir aside).
FLAGS = [flag for flag in shlex.split(re.search(r"^FLAGS='(.*)'$", loopback_block(), re.M)[1])
         if not flag.startswith('--model_dir=')]
COMMAND = [sys.executable, '-m', 'simclr_tf2.run']
# One process, MirroredStrategy over two logical CPUs, one input pipeline per replica.
MIRRORED = '''
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


class PipelinePerReplica(tf.distribute.MirroredStrategy):
  def distribute_datasets_from_function(self, dataset_fn, options=None):
    return super().distribute_datasets_from_function(dataset_fn, options or
        tf.distribute.InputOptions(
            experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA))


from simclr_tf2.run import run_in_process
sys.exit(run_in_process(['simclr-tf2'] + sys.argv[1:],
                        PipelinePerReplica(['/cpu:0', '/cpu:1'])))
'''
CLEAN_ENV = {'TF_CPP_MIN_LOG_LEVEL': '2', 'TF_USE_LEGACY_KERAS': '1'}


def command_environ(**extra):
  """This process' environment without its own cluster (TF_CONFIG, SLURM_*), quiet, plus
  `extra`: what every started command runs with."""
  environ = {key: value for key, value in os.environ.items()
             if key != 'TF_CONFIG' and not key.startswith('SLURM_')}
  environ.update(CLEAN_ENV, **extra)
  return environ


def free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  try:
    for s in sockets:
      s.bind(('127.0.0.1', 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def consecutive_free_ports(count):
  """`count` free consecutive ports (a SLURM node's tasks listen on port_base + local rank)."""
  for _ in range(100):
    base = free_ports(1)[0]
    if base + count > 65535:
      continue
    try:
      sockets = []
      for port in range(base, base + count):
        s = socket.socket()
        sockets.append(s)
        s.bind(('127.0.0.1', port))
      return list(range(base, base + count))
    except OSError:
      continue
    finally:
      for s in sockets:
        s.close()
  raise RuntimeError('no consecutive free ports')


def tf_configs(workers):
  addresses = [f'127.0.0.1:{port}' for port in free_ports(workers)]
  return [{'cluster': {'worker': addresses}, 'task': {'type': 'worker', 'index': index}}
          for index in range(workers)]


class Processes:
  """Started command processes, each logging to a file; all are killed on exit."""

  def __init__(self, log_dir):
    self.log_dir = pathlib.Path(log_dir)
    self.running = []

  def start(self, name, argv, env=None, tmpdir=None):
    environ = command_environ(**(env or {}))
    if tmpdir is not None:  # where a non-chief's scratch directories go
      tmpdir.mkdir(parents=True, exist_ok=True)
      environ['TMPDIR'] = str(tmpdir)
    with open(self.log_dir / f'{name}.log', 'wb') as log:
      process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=environ)
    process.name = name
    self.running.append(process)
    return process

  def workers(self, name, argv, envs, tmpdirs):
    return [self.start(f'{name}{index}', argv, env, tmpdir)
            for index, (env, tmpdir) in enumerate(zip(envs, tmpdirs))]

  def wait(self, process, timeout=TIMEOUT):
    try:
      return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      pytest.fail(f'{process.name} did not finish within {timeout} s\n{self.log(process)}')

  def wait_ok(self, *processes):
    for process in processes:
      code = self.wait(process)
      assert code == 0, f'{process.name} exited with {code}\n{self.log(process)[-3000:]}'

  def log(self, process):
    return (self.log_dir / f'{process.name}.log').read_text(errors='replace')

  def kill_all(self):
    for process in self.running:
      if process.poll() is None:
        process.kill()
    for process in self.running:
      process.wait(timeout=TIMEOUT)


@pytest.fixture
def processes(tmp_path):
  started = Processes(tmp_path)
  yield started
  started.kill_all()


def weights(prefix):
  reader = tf.train.load_checkpoint(str(prefix))
  return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()}


def assert_same_checkpoint(actual, expected, tolerance=TOLERANCE):
  """The same keys, and every variable's value within `tolerance` (the serialized object graph
  may list objects in another order after a restore)."""
  actual, expected = weights(actual), weights(expected)
  assert sorted(actual) == sorted(expected)
  for key, value in expected.items():
    if not isinstance(value, bytes):
      np.testing.assert_allclose(actual[key], value, rtol=0, atol=tolerance, err_msg=key)


def event_file_pids(model_dir):
  # events.out.tfevents.<time>.<host>.<pid>.<n>.v2
  return {int(path.name.split('.')[-3]) for path in model_dir.glob('events.out.tfevents.*')}


@pytest.fixture(scope='session')
def mirrored_run(tmp_path_factory):
  """model_dir of the one-process two-replica reference run (ckpt-2, ckpt-4)."""
  root = tmp_path_factory.mktemp('mirrored')
  started = Processes(root)
  try:
    process = started.start('mirrored', [sys.executable, '-c', MIRRORED, *FLAGS,
                                         f'--model_dir={root / "model"}'])
    started.wait_ok(process)
  finally:
    started.kill_all()
  model_dir = root / 'model'
  # Training moved the weights well beyond the tolerance, so equal checkpoints mean equal updates.
  last, before = weights(model_dir / 'ckpt-4'), weights(model_dir / 'ckpt-2')
  moved = [key for key, value in last.items() if not isinstance(value, bytes) and
           value.dtype.kind == 'f' and np.abs(value - before[key]).max() > 1000 * TOLERANCE]
  assert len(moved) > len(last) // 2, moved
  return model_dir


def assert_only_the_chief_wrote(model_dir, chief_pids, scratch_dirs, finished=True):
  """model_dir holds the chief's files only (no writer.lock left; ckpt-4 and the export once
  `finished`), and no scratch directory holds a save."""
  steps, exports = ((2, 4), {'saved_model'}) if finished else ((2,), set())
  names = {path.name for path in model_dir.iterdir()}
  assert {name for name in names if not name.startswith('events.out.tfevents.')} == {
      'checkpoint', 'config.json', 'flags.json', 'log.txt', *exports,
      *(f'ckpt-{step}.{suffix}' for step in steps for suffix in ('index', 'data-00000-of-00001'))}
  assert event_file_pids(model_dir) == set(chief_pids)
  if finished:
    assert [path.name for path in (model_dir / 'saved_model').iterdir()] == ['4']
  for scratch in scratch_dirs:  # the non-chief's TMPDIR: its scratch saves, then deleted
    assert [path.name for path in scratch.rglob('*') if path.name.startswith(
        WORKER_SCRATCH_PREFIX) or 'ckpt' in path.name] == []


def wait_for_checkpoint(model_dir, step, workers, processes):
  """Polls until model_dir's state file names ckpt-<step>; fails if a worker exits first."""
  state = model_dir / 'checkpoint'
  deadline = time.monotonic() + TIMEOUT
  while not (state.exists() and f'ckpt-{step}"' in state.read_text(errors='replace')):
    for worker in workers:
      if worker.poll() is not None:
        pytest.fail(f'{worker.name} exited with {worker.returncode} before ckpt-{step}\n'
                    f'{processes.log(worker)[-3000:]}')
    assert time.monotonic() < deadline, f'no ckpt-{step} within {TIMEOUT} s'
    time.sleep(0.05)


def error_lines(text):
  return [line for line in text.splitlines() if line.startswith('error:')]


def slurm_step(workers):
  """The environments of a faked SLURM job step of `workers` tasks on localhost, and their
  addresses (SlurmClusterResolver: the tasks of a node listen on consecutive ports from the
  first reserved one)."""
  ports = consecutive_free_ports(workers)
  step = {'SLURM_JOB_ID': '4242', 'SLURM_STEP_ID': '0', 'SLURM_STEP_NUM_TASKS': str(workers),
          'SLURM_STEP_NODELIST': 'localhost', 'SLURM_STEP_TASKS_PER_NODE': str(workers),
          'SLURM_STEP_RESV_PORTS': f'{ports[0]}-{ports[-1]}', 'CUDA_VISIBLE_DEVICES': ''}
  return ([{**step, 'SLURM_PROCID': str(rank)} for rank in range(workers)],
          [f'localhost:{port}' for port in ports])


def kill_a_worker_after_ckpt_2(processes, tmp_path, model_dir, cluster, killed, mirrored_run):
  """Starts two workers of `cluster` (slurm_step), kills worker `killed`
  once the chief has saved ckpt-2 (the reference's), and checks that the other stops within
  LOST_WORKER_SECONDS with one line naming the lost worker. Returns the two processes."""
  envs, addresses = cluster(2)
  first = processes.workers('first', COMMAND + FLAGS + [f'--model_dir={model_dir}'], envs,
                            [tmp_path / f'tmp{index}' for index in range(2)])
  wait_for_checkpoint(model_dir, 2, first, processes)
  os.kill(first[killed].pid, signal.SIGKILL)
  assert_same_checkpoint(model_dir / 'ckpt-2', mirrored_run / 'ckpt-2')
  killed_at = time.monotonic()
  first[killed].wait(timeout=TIMEOUT)  # reaped, as a shell would: a zombie still holds its pid
  survivor = first[1 - killed]
  code = processes.wait(survivor, timeout=LOST_WORKER_SECONDS)
  print(f'worker {1 - killed} stopped {time.monotonic() - killed_at:.1f} s after worker '
        f'{killed} was killed')
  log = processes.log(survivor)
  assert code == 1, log[-3000:]
  assert error_lines(log) == [line for line in error_lines(log)
                              if line.startswith(f'error: lost worker {killed} '
                                                 f'({addresses[killed]}): ')]
  assert len(error_lines(log)) == 1 and 'Traceback' not in log, log[-3000:]
  assert not (model_dir / 'ckpt-4.index').exists()
  return first


def assert_resumed_to_the_reference(model_dir, reference, tolerance=TOLERANCE):
  assert_same_checkpoint(model_dir / 'ckpt-4', reference / 'ckpt-4', tolerance)
  assert not (model_dir / 'writer.lock').exists()


@pytest.mark.slow
def test_the_documented_cluster_resumes_a_slurm_step_whose_worker_was_killed(tmp_path, processes,
                                                                            mirrored_run):
  model_dir = tmp_path / 'model'  # the same path for all: on one machine, it is shared
  first = kill_a_worker_after_ckpt_2(processes, tmp_path, model_dir, slurm_step, 1, mirrored_run)
  for rank, worker in enumerate(first):
    assert f'2 replicas (MultiWorkerMirroredStrategy, worker {rank} of 2)' in (
        processes.log(worker))
  # The surviving chief tidied up (no writer.lock) and kept ckpt-2.
  assert_only_the_chief_wrote(model_dir, [first[0].pid], [tmp_path / 'tmp0'], finished=False)

  # Started again by the page's lines (TF_CONFIG), as written, on new ports and this model_dir:
  # how the cluster was described does not enter the run's settings.
  script = loopback_block()
  for documented, free in zip(DOC_PORTS, free_ports(2)):
    script = script.replace(documented, str(free))
  script = script.replace(DOC_MODEL_DIR, str(model_dir))
  # The workers' TMPDIR is the killed worker's. SIGKILL may have stopped it inside a scratch
  # save; one is planted under its pid so that the check does not depend on that timing: the
  # restarted non-chief removes it when it makes its own (checked with the chief's files below).
  scratch = tmp_path / 'tmp1'
  (scratch / f'{WORKER_SCRATCH_PREFIX}{socket.gethostname()}.{first[1].pid}.x.left' /
   'ckpt-2_temp').mkdir(parents=True)
  bin_dir = os.path.dirname(sys.executable)  # `python` in the block: this interpreter
  env = command_environ(PATH=f'{bin_dir}{os.pathsep}{os.environ.get("PATH", "")}',
                        TMPDIR=str(scratch))
  result = subprocess.run(['bash', '-e', '-c', script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)
  worker1 = (tmp_path / 'worker1.log').read_text(errors='replace')
  assert result.returncode == 0, (result.stderr[-3000:], worker1[-3000:])
  assert '2 replicas (MultiWorkerMirroredStrategy, worker 0 of 2): CPU:0' in (
      result.stdout + result.stderr)
  assert '2 replicas (MultiWorkerMirroredStrategy, worker 1 of 2): CPU:0' in worker1
  assert 'done in' in worker1 and 'error' not in worker1, worker1[-3000:]
  assert f'Resumed from {model_dir / "ckpt-2"}' in (model_dir / 'log.txt').read_text()
  assert_resumed_to_the_reference(model_dir, mirrored_run)
  chief_pids = event_file_pids(model_dir)  # the SLURM step's chief's and the page's chief's
  assert len(chief_pids) == 2 and first[0].pid in chief_pids, chief_pids
  assert_only_the_chief_wrote(model_dir, chief_pids, [scratch])


@pytest.mark.slow
def test_the_mirrored_run_resumed_in_a_new_process_ends_bit_identical(tmp_path, processes,
                                                                       mirrored_run):
  # What the reference's process leaves when it is stopped after ckpt-2 (a real `kill -9` right
  # after a checkpoint is the cluster test's): its folder without ckpt-4 and the export.
  model_dir = tmp_path / 'model'
  shutil.copytree(mirrored_run, model_dir,
                  ignore=shutil.ignore_patterns('ckpt-4.*', 'saved_model', 'events.out.*'))
  tf.compat.v1.train.update_checkpoint_state(str(model_dir), str(model_dir / 'ckpt-2'))
  resumed = processes.start('resumed', [sys.executable, '-c', MIRRORED, *FLAGS,
                                        f'--model_dir={model_dir}'])
  processes.wait_ok(resumed)
  log = processes.log(resumed)  # it trained steps 3 and 4 only
  assert 'step 4/4' in log and 'step 2/4' not in log, log[-3000:]
  assert_resumed_to_the_reference(model_dir, mirrored_run, tolerance=0)


def test_workers_with_different_flags_stop_with_one_line_each(tmp_path, processes):
  model_dir = tmp_path / 'model'
  argv = COMMAND + FLAGS + [f'--model_dir={model_dir}']
  workers = [processes.start(f'worker{index}', argv + extra,
                             {'TF_CONFIG': json.dumps(config)})
             for index, (config, extra) in enumerate(zip(
                 tf_configs(2), [[], ['--train_batch_size=32', '--resnet_depth=34']]))]
  for worker in workers:
    code = processes.wait(worker)
    log = processes.log(worker)
    assert code == 1, log
    assert error_lines(log) == [
        'error: the workers were started with different settings: --resnet_depth, '
        "--train_batch_size of worker 1 differ from worker 0's; start every worker with the "
        'same flags'], log
  assert not model_dir.exists()


def _busy_port_config():
  listener = socket.socket()
  listener.bind(('127.0.0.1', 0))
  listener.listen()
  port = listener.getsockname()[1]
  return listener, {'cluster': {'worker': [f'127.0.0.1:{port}', '127.0.0.1:1']},
                    'task': {'type': 'worker', 'index': 0}}, port


TWO_WORKERS = {'worker': ['127.0.0.1:1', '127.0.0.1:2']}


@pytest.mark.parametrize('tf_config,flags,expected', [
    ('{"cluster": ', [], 'error: TF_CONFIG is not JSON ('),
    (json.dumps({'task': {'type': 'worker', 'index': 0}}), [], 'error: TF_CONFIG has no "cluster"'),
    (json.dumps({'cluster': TWO_WORKERS, 'task': {'type': 'worker', 'index': 2}}), [],
     'error: TF_CONFIG: task index 2 is out of range: the cluster has 2 worker task(s)'),
    (json.dumps({'cluster': TWO_WORKERS}), [], 'error: TF_CONFIG: task type None is not in'),
    (json.dumps({'cluster': {'worker': ['127.0.0.1']}, 'task': {'type': 'worker', 'index': 0}}),
     [], "error: TF_CONFIG: worker address '127.0.0.1' is not \"host:port\""),
    (json.dumps({'cluster': TWO_WORKERS, 'task': {'type': 'worker', 'index': 1}}),
     ['--use_tpu=true'], 'error: --use_tpu=true with a TF_CONFIG cluster of 2 tasks'),
    ('busy port', [], 'error: port {port} of worker 0 (127.0.0.1:{port}) is already in use'),
], ids=['not_json', 'no_cluster', 'index_out_of_range', 'no_task', 'no_port', 'tpu_and_tf_config',
        'busy_port'])
def test_a_bad_cluster_is_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys,
                                                              tf_config, flags, expected):
  listener = None
  if tf_config == 'busy port':
    listener, config, port = _busy_port_config()
    tf_config, expected = json.dumps(config), expected.format(port=port)
  monkeypatch.setenv('TF_CONFIG', tf_config)
  model_dir = tmp_path / 'model'
  try:
    code = run_command.run_in_process(['simclr-tf2', *FLAGS, f'--model_dir={model_dir}', *flags])
  finally:
    if listener:
      listener.close()
  err = capsys.readouterr().err
  assert code == 1
  assert len(err.splitlines()) == 1 and err.startswith(expected), err
  assert not model_dir.exists()


def test_no_tpu_is_one_line_naming_where_the_command_looked(tmp_path):
  result = subprocess.run(
      COMMAND + ['--dataset=digits', '--use_tpu=true', '--tpu_name=no-such-tpu-here',
                 f'--model_dir={tmp_path / "model"}'],
      capture_output=True, text=True, timeout=TIMEOUT, check=False,
      env=command_environ())
  assert result.returncode == 1
  lines = result.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      'error: no TPU reachable at --tpu_name=no-such-tpu-here ('), result.stderr
  assert '--use_tpu=false' in lines[0]
  assert not (tmp_path / 'model').exists()


@pytest.mark.parametrize('tool', ['embed', 'demo'])
@pytest.mark.parametrize('cluster', ['tf_config', 'slurm'])
def test_one_process_tools_refuse_a_cluster_in_one_line(tmp_path, monkeypatch, capsys, tool,
                                                        cluster):
  # pylint: disable=import-outside-toplevel
  from simclr_tf2 import command, demo, embed
  if cluster == 'tf_config':
    monkeypatch.setenv('TF_CONFIG', json.dumps({'cluster': TWO_WORKERS,
                                                'task': {'type': 'worker', 'index': 0}}))
  else:
    for name, value in {'SLURM_JOB_ID': '7', 'SLURM_PROCID': '0', 'SLURM_STEP_NUM_TASKS': '2',
                        'SLURM_STEP_NODELIST': 'localhost',
                        'SLURM_STEP_TASKS_PER_NODE': '2'}.items():
      monkeypatch.setenv(name, value)
  out = tmp_path / 'out'
  if tool == 'embed':
    code = embed.run(['simclr-tf2-embed', f'--source={tmp_path}', '--dataset=digits',
                      f'--output_dir={out}', '--use_tpu=false'])
  else:
    code = command.run(demo.define_flags, demo.main, ['demo', f'--model_dir={out}'])
  err = capsys.readouterr().err
  assert code == 1
  assert len(err.splitlines()) == 1 and 'runs in one process, not on a cluster' in err, err
  assert not out.exists()
