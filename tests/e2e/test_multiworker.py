"""A real two-process MultiWorkerMirroredStrategy run (TF_CONFIG over loopback, one CPU replica per
worker) computes what a one-process two-replica MirroredStrategy run computes on the same
per-replica batches (sync BN and the NT-Xent gathered across workers), only the chief writes into
model_dir, and killing a worker then restarting both resumes from the last checkpoint.

The processes run tests/multiworker_worker.py; see there for the config and the fixed batches.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

WORKER = pathlib.Path(__file__).with_name('multiworker_worker.py')
TRAIN_STEPS = 3  # as in the worker script
HANG_STEP = 2  # the workers stop after this step's checkpoint; one is killed
TIMEOUT = 420  # seconds for any one process (generous: the CPUs may be shared)
TOLERANCE = 1e-5


def free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  try:
    for s in sockets:
      s.bind(('127.0.0.1', 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


class Processes:
  """Started worker processes, each logging to a file; all are killed on exit."""

  def __init__(self, log_dir):
    self.log_dir = log_dir
    self.running = []

  def start(self, name, args, tf_config=None, tmpdir=None):
    env = {key: value for key, value in os.environ.items() if key != 'TF_CONFIG'}
    env.update(TF_CPP_MIN_LOG_LEVEL='2', TF_USE_LEGACY_KERAS='1')
    if tf_config is not None:
      env['TF_CONFIG'] = json.dumps(tf_config)
    if tmpdir is not None:
      env['TMPDIR'] = str(tmpdir)
    log = open(self.log_dir / f'{name}.log', 'wb')  # pylint: disable=consider-using-with
    process = subprocess.Popen([sys.executable, str(WORKER), *map(str, args)],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    process.name = name
    self.running.append(process)
    return process

  def wait_ok(self, process):
    try:
      code = process.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
      pytest.fail(f'{process.name} did not finish within {TIMEOUT} s\n{self.tail(process)}')
    assert code == 0, f'{process.name} exited with {code}\n{self.tail(process)}'

  def tail(self, process):
    return (self.log_dir / f'{process.name}.log').read_text(errors='replace')[-3000:]

  def kill(self, process):
    if process.poll() is None:
      os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=TIMEOUT)

  def kill_all(self):
    for process in self.running:
      if process.poll() is None:
        process.kill()
    for process in self.running:
      process.wait(timeout=TIMEOUT)


def cluster(workers):
  """The TF_CONFIG of each worker of a loopback cluster on free ports."""
  addresses = [f'127.0.0.1:{port}' for port in free_ports(workers)]
  return [{'cluster': {'worker': addresses}, 'task': {'type': 'worker', 'index': i}}
          for i in range(workers)]


def wait_for_files(paths, processes, workers):
  """Polls until every path exists; fails if a worker exits first or TIMEOUT passes."""
  deadline = time.monotonic() + TIMEOUT
  while not all(path.exists() for path in paths):
    for worker in workers:
      if worker.poll() is not None:
        pytest.fail(f'{worker.name} exited with {worker.returncode} before step {HANG_STEP}\n'
                    f'{processes.tail(worker)}')
    if time.monotonic() > deadline:
      pytest.fail(f'no step {HANG_STEP} within {TIMEOUT} s')
    time.sleep(0.5)


def read_run(path):
  with np.load(path) as data:
    weights = {key[len('weight:'):]: data[key] for key in data.files if key.startswith('weight:')}
    return {'weights': weights, 'logs': json.loads(str(data['logs'])),
            'first_step': int(data['first_step']), 'last_step': int(data['last_step']),
            'pid': int(data['pid'])}


def event_file_pids(model_dir):
  # events.out.tfevents.<time>.<host>.<pid>.<n>.v2
  return [int(path.name.split('.')[-3]) for path in model_dir.glob('events.out.tfevents.*')]


@pytest.mark.slow
def test_two_workers_equal_mirrored_and_resume_after_a_kill(tmp_path):
  init = tmp_path / 'init' / 'weights'
  model_dir = tmp_path / 'model_dir'
  scratch = tmp_path / 'worker_tmp'  # the workers' TMPDIR: non-chief saves go there, then away
  scratch.mkdir()
  processes = Processes(tmp_path)
  try:
    reference = processes.start('mirrored', ['mirrored', tmp_path / 'mirrored.npz',
                                             tmp_path / 'mirrored_dir', init])
    processes.wait_ok(reference)

    # First attempt: both workers stop after step HANG_STEP's checkpoint; worker 1 is killed.
    outs = [tmp_path / f'worker{i}.npz' for i in range(2)]
    first = [processes.start(f'worker{i}_first', ['worker', outs[i], model_dir, init, HANG_STEP],
                             tf_config, scratch)
             for i, tf_config in enumerate(cluster(2))]
    markers = [pathlib.Path(f'{out}.step{HANG_STEP}') for out in outs]
    wait_for_files(markers, processes, first)
    first_pids = [worker.pid for worker in first]
    processes.kill(first[1])
    processes.kill(first[0])  # blocked in the next step's collectives without its peer
    assert sorted(p.name for p in model_dir.glob('ckpt-*.index')) == [
        f'ckpt-{step}.index' for step in range(1, HANG_STEP + 1)]

    # Restart both: they resume from ckpt-HANG_STEP and stop at exactly TRAIN_STEPS.
    second = [processes.start(f'worker{i}_second', ['worker', outs[i], model_dir, init],
                              tf_config, scratch)
              for i, tf_config in enumerate(cluster(2))]
    for worker in second:
      processes.wait_ok(worker)
  finally:
    processes.kill_all()

  expected = read_run(tmp_path / 'mirrored.npz')
  assert (expected['first_step'], expected['last_step']) == (0, TRAIN_STEPS)
  before_kill = [json.loads(marker.read_text()) for marker in markers]
  runs = [read_run(out) for out in outs]
  for index, run in enumerate(runs):
    assert (run['first_step'], run['last_step']) == (HANG_STEP, TRAIN_STEPS)
    logs = {**before_kill[index], **run['logs']}
    assert sorted(logs) == sorted(expected['logs']) == [str(s) for s in range(1, TRAIN_STEPS + 1)]
    for step, step_logs in expected['logs'].items():
      assert step_logs.keys() == logs[step].keys()
      for tag, value in step_logs.items():
        assert logs[step][tag] == pytest.approx(value, rel=TOLERANCE, abs=TOLERANCE), (
            index, step, tag)
    assert run['weights'].keys() == expected['weights'].keys()
    for key, value in expected['weights'].items():
      np.testing.assert_allclose(run['weights'][key], value, rtol=0, atol=TOLERANCE,
                                 err_msg=f'worker {index}: {key}')
  # Training moved the weights away from the shared start, so equal weights mean equal updates.
  reader = tf.train.load_checkpoint(str(init))
  moved = [key for key, value in expected['weights'].items()
           if np.abs(value - reader.get_tensor(key)).max() > 100 * TOLERANCE]
  assert len(moved) > len(expected['weights']) // 2

  # Only the chief wrote into model_dir: its checkpoints and its summaries, nothing else.
  chief_pids = {first_pids[0], runs[0]['pid']}
  assert sorted(set(event_file_pids(model_dir))) == sorted(chief_pids)
  names = {path.name for path in model_dir.iterdir()}
  assert {name for name in names if not name.startswith('events.out.tfevents.')} == {
      'checkpoint', *(f'ckpt-{step}.{suffix}' for step in range(1, TRAIN_STEPS + 1)
                      for suffix in ('index', 'data-00000-of-00001'))}
  # The non-chief saved into its temporary directory (TMPDIR), then deleted it.
  assert [path.name for path in scratch.rglob('*') if 'ckpt' in path.name
          or path.name == 'checkpoint'] == []
