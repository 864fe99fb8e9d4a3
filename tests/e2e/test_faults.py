"""Fault injection: concurrent writers, kills, garbage files, full or read-only disks,
diverged checkpoints. Each test checks the one-line message and that nothing already saved is lost.

The disk-full and read-only cases mount a tiny tmpfs (needs root); they are skipped with the reason
when mounting is not permitted.
"""

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import uuid

import numpy as np
import pytest
import tensorflow as tf

from golden_data import REPO
from simclr_tf2.network import checkpoint as ckpt_lib
from simclr_tf2 import model_dir as md
from simclr_tf2.data import distributed_dataset
from simclr_tf2.training.evaluator import Evaluator
from simclr_tf2.training.runner import run
from simclr_tf2.training.trainer import Trainer
from simclr_tf2.training.callbacks import CheckpointSaver
from simclr_tf2.config import Config
from simclr_tf2.data import get_source
from simclr_tf2.errors import CheckpointError, FileSystemError, ModelDirError, TrainingError
from simclr_tf2.errors import os_errors
from simclr_tf2.training.lars import build_optimizer
from simclr_tf2.network.model import build_model
from simclr_tf2.training.task import SimCLRTask

LOCK_SCRIPT = '''
import sys
from simclr_tf2.model_dir import ModelDirLock
lock = ModelDirLock(sys.argv[1]).acquire()
print('locked', flush=True)
sys.stdin.readline()  # hold the lock until told to go on
if sys.argv[2] == 'release':
  lock.release()
print('done', flush=True)
'''


def _one_line(message):
  return message and '\n' not in message


@contextlib.contextmanager
def lock_holder(model_dir, ending='exit'):
  """A separate process holding the writer lock of model_dir until the block ends."""
  process = subprocess.Popen([sys.executable, '-c', LOCK_SCRIPT, str(model_dir), ending],
                             cwd=str(REPO), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert process.stdout.readline() == 'locked\n'
    yield process
  finally:
    process.stdin.close()  # end of input: the holder goes on and exits normally (atexit runs)
    try:
      process.wait(timeout=60)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()


def _files(directory):
  """{relative path: bytes} of every file below directory."""
  found = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        found[os.path.relpath(path, directory)] = f.read()
  return found


# --- 1. one writer per model_dir ---------------------------------------------------------------

def test_second_writer_fails_at_once_naming_the_holder(tmp_path):
  with lock_holder(tmp_path) as holder:
    with pytest.raises(ModelDirError) as error:
      md.ModelDirLock(tmp_path).acquire()
    message = str(error.value)
    assert _one_line(message)
    assert message.startswith(f'model_dir {tmp_path} is in use by another run (pid {holder.pid} '
                              f'on host {socket.gethostname()}, started 20')
    assert message.endswith(f'(if no such run exists, delete {tmp_path / md.LOCK_FILE_NAME})')
    holder.stdin.write('\n')
    holder.stdin.flush()
    assert holder.stdout.readline() == 'done\n'
  assert not (tmp_path / md.LOCK_FILE_NAME).exists()  # released at the holder's exit (atexit)
  with md.ModelDirLock(tmp_path) as lock:
    assert lock.held and (tmp_path / md.LOCK_FILE_NAME).exists()
  assert os.listdir(tmp_path) == []


def test_lock_of_a_killed_process_is_taken_over_with_a_warning(tmp_path, caplog):
  with lock_holder(tmp_path) as holder:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    stale = json.loads((tmp_path / md.LOCK_FILE_NAME).read_text())
    assert stale['pid'] == holder.pid
  with caplog.at_level(logging.WARNING):
    lock = md.ModelDirLock(tmp_path).acquire()
  assert json.loads((tmp_path / md.LOCK_FILE_NAME).read_text())['pid'] == os.getpid()
  assert f'pid {holder.pid} on host' in caplog.text and 'no longer runs' in caplog.text
  lock.release()
  assert os.listdir(tmp_path) == []


def test_lock_of_another_host_is_not_taken_over(tmp_path):
  (tmp_path / md.LOCK_FILE_NAME).write_text(json.dumps(dict(
      pid=1, host='elsewhere', started='2026-01-01T00:00:00Z', start_ticks=None,
      token=uuid.uuid4().hex)))
  with pytest.raises(ModelDirError, match=r'in use by another run \(pid 1 on host elsewhere, '
                                          r'started 2026-01-01T00:00:00Z\)'):
    md.ModelDirLock(tmp_path).acquire()


def test_released_lock_is_not_removed_twice_and_a_second_object_of_the_process_waits(tmp_path):
  first = md.ModelDirLock(tmp_path).acquire()
  with pytest.raises(ModelDirError, match=f'pid {os.getpid()}'):
    md.ModelDirLock(tmp_path).acquire()
  first.release()
  first.release()
  assert os.listdir(tmp_path) == []


# --- model_dir usable ----------------------------------------------------------------------------

def test_model_dir_that_is_a_file(tmp_path):
  a_file = tmp_path / 'runs'
  a_file.write_text('not a directory')
  with pytest.raises(ModelDirError) as error:
    md.prepare_model_dir(str(a_file))
  assert str(error.value) == f'--model_dir={a_file} is a file, not a directory'
  with pytest.raises(ModelDirError) as error:
    md.prepare_model_dir(str(a_file / 'run1'))
  assert str(error.value) == (f'cannot create --model_dir={a_file / "run1"}: {a_file} is a file, '
                              'not a directory')
  assert a_file.read_text() == 'not a directory' and os.listdir(tmp_path) == ['runs']


def test_check_model_dir_writes_nothing(tmp_path):
  md.check_model_dir(str(tmp_path / 'new' / 'run'))
  md.check_model_dir(str(tmp_path))
  assert os.listdir(tmp_path) == []
  md.prepare_model_dir(str(tmp_path / 'new' / 'run'))
  assert (tmp_path / 'new' / 'run').is_dir()


@pytest.fixture
def tiny_tmpfs(tmp_path):
  """A 1 MiB tmpfs mounted at tmp_path/mnt (skipped where mounting is not permitted)."""
  mount_point = tmp_path / 'mnt'
  mount_point.mkdir()

  def mount(*options):
    result = subprocess.run(['mount', '-t', 'tmpfs', '-o', ','.join(('size=1m',) + options),
                             'tmpfs', str(mount_point)], capture_output=True, text=True)
    if result.returncode:
      pytest.skip(f'cannot mount a tmpfs here ({result.stderr.strip() or result.returncode})')
    return mount_point

  yield mount
  subprocess.run(['umount', str(mount_point)], capture_output=True, check=False)


def test_read_only_model_dir_is_a_one_line_error(tiny_tmpfs):
  mount_point = tiny_tmpfs('ro')
  with pytest.raises(FileSystemError) as error:
    md.check_model_dir(str(mount_point))
  assert str(error.value) == f'cannot write to {mount_point}: read-only file system'
  with pytest.raises(FileSystemError) as error:
    md.check_model_dir(str(mount_point / 'run'))
  assert str(error.value) == (f'cannot write to {mount_point} (to create --model_dir='
                              f'{mount_point / "run"}): read-only file system')


def _small_checkpoint(directory, values, name='ckpt'):
  variables = {f'v{i}': tf.Variable(value) for i, value in enumerate(values)}
  return tf.train.Checkpoint(**variables).write(os.path.join(str(directory), name))


def test_disk_full_while_saving_is_a_one_line_error_and_keeps_what_was_saved(tiny_tmpfs):
  mount_point = tiny_tmpfs()
  good = _small_checkpoint(mount_point, [np.ones(1000, np.float32)], 'good')
  before = _files(mount_point)
  with pytest.raises(FileSystemError) as error:
    with os_errors('save checkpoint', f'{mount_point}/big'):
      _small_checkpoint(mount_point, [np.ones(1 << 19, np.float32)], 'big')  # 2 MiB > 1 MiB
  assert str(error.value) == (f'cannot save checkpoint {mount_point}/big: no space left on the '
                              'device (disk full)')
  assert {k: v for k, v in _files(mount_point).items() if k in before} == before
  np.testing.assert_array_equal(tf.train.load_checkpoint(good).get_tensor(
      'v0/.ATTRIBUTES/VARIABLE_VALUE'), np.ones(1000, np.float32))


# --- 8. leftovers of a kill during a save or an export --------------------------------------------

def dead_pid():
  process = subprocess.Popen([sys.executable, '-c', 'pass'])
  process.wait()
  return process.pid


def test_scratch_directories_of_dead_workers_are_removed_when_a_worker_starts_one(tmp_path):
  """A non-chief worker killed during a save leaves its scratch directory; the next one made in
  that folder removes it, and nothing of a live process, another host or anybody else."""
  host, prefix = socket.gethostname(), md.WORKER_SCRATCH_PREFIX
  dead = tmp_path / f'{prefix}{host}.{dead_pid()}.x.a_b1'
  kept = [tmp_path / f'{prefix}{host}.{os.getpid()}.x.c2',  # alive (this process)
          tmp_path / f'{prefix}other.host.{dead_pid()}.x.d3',  # another host's
          tmp_path / f'{prefix}garbled', tmp_path / 'simclr_worker_e4']  # not ours to judge
  for directory in [dead, *kept]:
    (directory / 'ckpt-2_temp').mkdir(parents=True)
  made = md.make_worker_scratch_dir(str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(made)] +
                                                [path.name for path in kept])
  assert os.path.basename(made).startswith(f'{prefix}{host}.{os.getpid()}.')
  assert md.make_worker_scratch_dir(str(tmp_path)) != made  # this process' own are kept


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
  prefix = _small_checkpoint(tmp_path, [np.arange(4, dtype=np.float32)], 'ckpt-10')
  (tmp_path / 'checkpoint').write_text('model_checkpoint_path: "ckpt-10"\n')
  (tmp_path / 'config.json').write_text('{}')
  kept = _files(tmp_path)
  leftovers = ['ckpt-20_temp/part-00000-of-00001.data-00000-of-00001',
               'ckpt-20.index.tempstate1234567', 'checkpoint.tmp' + 'ab' * 16,
               'config.json.tmp-999999999', 'saved_model/10.tmp-0123abcd/saved_model.pb']
  for name in leftovers:
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(b'partial')
  (tmp_path / 'saved_model' / '10').mkdir()
  (tmp_path / 'saved_model' / '10' / 'saved_model.pb').write_bytes(b'complete export')
  kept['saved_model/10/saved_model.pb'] = b'complete export'
  live_temporary = tmp_path / f'result.json.tmp-{os.getpid()}'  # a live process is writing it
  live_temporary.write_text('{}')
  kept[live_temporary.name] = b'{}'

  removed = md.remove_stale_temporaries(str(tmp_path))
  assert sorted(os.path.relpath(p, tmp_path) for p in removed) == sorted(
      ['ckpt-20_temp', 'ckpt-20.index.tempstate1234567', 'checkpoint.tmp' + 'ab' * 16,
       'config.json.tmp-999999999', 'saved_model/10.tmp-0123abcd'])
  assert _files(tmp_path) == kept  # byte-identical, nothing else touched
  assert tf.train.load_checkpoint(prefix) is not None


def test_export_moved_aside_by_a_killed_export_is_put_back(tmp_path):
  aside = tmp_path / 'saved_model' / '30.old-0123abcd'
  aside.mkdir(parents=True)
  (aside / 'saved_model.pb').write_bytes(b'the only copy')
  assert md.remove_stale_temporaries(str(tmp_path)) == []
  assert _files(tmp_path) == {'saved_model/30/saved_model.pb': b'the only copy'}


# --- 4. the checkpoint state file -----------------------------------------------------------------

@pytest.mark.parametrize('content,problem', [
    (b'this is not a checkpoint state\n', 'cannot be parsed (1:1 : Message type '
     '"tensorflow.CheckpointState" has no field named "this".)'),
    (b'\x89\xff\x00\x13garbage\xfe', 'is not text (binary garbage)'),
    (b'', 'names no checkpoint (model_checkpoint_path is empty)'),
    (b'model_checkpoint_path: "ckpt-99"\n', 'names ckpt-99, whose .index file is missing'),
])
def test_bad_state_file_is_a_one_line_error_naming_it(tmp_path, content, problem):
  _small_checkpoint(tmp_path, [np.zeros(2, np.float32)], 'ckpt-5')
  _small_checkpoint(tmp_path, [np.zeros(2, np.float32)], 'ckpt-40')
  state = tmp_path / 'checkpoint'
  state.write_bytes(content)
  before = _files(tmp_path)
  with pytest.raises(ModelDirError) as error:
    md.read_checkpoint_state(str(tmp_path))
  assert str(error.value) == (f'checkpoint state file {state} {problem}; delete it to resume from '
                              'the newest checkpoint (ckpt-40), or restore it from a backup')
  assert _files(tmp_path) == before


def test_state_file_without_checkpoints_advises_a_fresh_start(tmp_path):
  (tmp_path / 'checkpoint').write_bytes(b'\xff\xfe')
  with pytest.raises(ModelDirError, match='no checkpoint is in the directory: delete it to start '
                                          'from step 0$'):
    md.read_checkpoint_state(str(tmp_path))


def test_good_state_file_reads_like_tensorflow(tmp_path):
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(1.)), str(tmp_path), 2)
  for step in (1, 2, 3):
    manager.save(checkpoint_number=step)
  state = md.read_checkpoint_state(str(tmp_path))
  assert state == (str(tmp_path / 'ckpt-3'), [str(tmp_path / 'ckpt-2'), str(tmp_path / 'ckpt-3')])
  assert state.latest == tf.train.latest_checkpoint(str(tmp_path))
  assert md.read_checkpoint_state(str(tmp_path / 'empty')) is None


# --- 3. diverged weights: never saved, never silently restored ---------------------------------

def test_checkpoint_with_nan_is_refused_unless_allowed(tmp_path, caplog):
  prefix = _small_checkpoint(tmp_path, [np.array([1., np.nan, np.inf], np.float32),
                                        np.ones(3, np.float32), np.array([1, 2])])
  assert ckpt_lib.non_finite_variables(prefix) == {'v0/.ATTRIBUTES/VARIABLE_VALUE': 2}
  with pytest.raises(CheckpointError) as error:
    ckpt_lib.check_finite(prefix)
  message = str(error.value)
  assert _one_line(message)
  assert message.startswith(f'checkpoint {prefix} contains NaN/inf values in 1 tensors (e.g. v0): '
                            'it comes from a diverged run.')
  assert message.endswith('or pass --allow_non_finite_checkpoint=true to load it anyway')
  with caplog.at_level(logging.WARNING):
    ckpt_lib.check_finite(prefix, allow_non_finite=True)
  assert 'restoring it anyway' in caplog.text
  ckpt_lib.check_finite(_small_checkpoint(tmp_path, [np.ones(2, np.float32)], 'fine'))


def test_restoring_a_diverged_run_is_refused(tmp_path):
  model = build_model(10, resnet_depth=18, image_size=8, train_mode='finetune')
  model.create_variables()
  model.trainable_variables[3].assign(tf.fill(model.trainable_variables[3].shape, np.nan))
  step = tf.Variable(7, dtype=tf.int64)
  prefix = tf.train.Checkpoint(model=model, global_step=step).write(str(tmp_path / 'ckpt-7'))
  fresh = build_model(10, resnet_depth=18, image_size=8, train_mode='finetune')
  fresh.create_variables()
  before = [v.numpy() for v in fresh.variables]
  for restore in (lambda: ckpt_lib.restore_for_evaluation(fresh, prefix),
                  lambda: ckpt_lib.restore_initial_weights(fresh, prefix),
                  lambda: ckpt_lib.restore_training_state(
                      tf.train.Checkpoint(model=fresh, global_step=tf.Variable(0, tf.int64)),
                      fresh, prefix)):
    with pytest.raises(CheckpointError, match='contains NaN/inf values in 1 tensors'):
      restore()
  for value, variable in zip(before, fresh.variables):  # nothing was loaded
    np.testing.assert_array_equal(value, variable.numpy())


def test_non_finite_variables_are_never_saved():
  variables = [tf.Variable([1., 2.], name='fine'), tf.Variable([np.nan, 0.], name='bad'),
               tf.Variable([1, 2], name='ints')]
  with pytest.raises(TrainingError) as error:
    ckpt_lib.assert_all_finite(variables, step=40, last_good='/runs/a/ckpt-30')
  assert str(error.value) == (
      'training diverged at step 40: 1 of 3 variables hold NaN/inf (e.g. bad:0); nothing was '
      'saved. The last good checkpoint (/runs/a/ckpt-30) is kept: lower --learning_rate or check '
      'the data')
  ckpt_lib.assert_all_finite(variables[::2], step=40, last_good=None)


# --- 9. resuming with another optimizer -------------------------------------------------------------

@pytest.mark.parametrize('golden,optimizer', [
    ('r18_cifar_pretrain_lars', 'lars'), ('r18_cifar_finetune_after4_lars', 'lars'),
    ('r50_imagenet_pretrain_lars', 'lars'),
    ('r18_cifar_finetune_momentum_tfkeras221', 'momentum'),
])
def test_optimizer_of_reference_checkpoint_keys(golden_dir, golden, optimizer):
  shapes = {}
  for line in (golden_dir / f'{golden}.keys.txt').read_text().splitlines():
    if line and not line.startswith('#'):
      key, shape = line.split(' ', 1)
      shapes[key] = json.loads(shape)
  assert ckpt_lib.checkpoint_optimizer(shapes) == optimizer


def test_resuming_with_another_optimizer_is_a_one_line_error(tmp_path):
  kernel, bias = tf.Variable(tf.ones([4, 3])), tf.Variable(tf.zeros([3]))
  prefixes = {}
  for name in ('lars', 'momentum', 'adam'):
    optimizer = build_optimizer(name, 0.1, 0.9, 0.)
    optimizer.apply_gradients([(tf.ones([4, 3]), kernel), (tf.ones([3]), bias)])
    prefixes[name] = tf.train.Checkpoint(kernel=kernel, bias=bias, optimizer=optimizer).write(
        str(tmp_path / name / 'ckpt-1'))
  for saved, prefix in prefixes.items():
    ckpt_lib.check_optimizer_matches(prefix, saved)
    for other in set(prefixes) - {saved}:
      with pytest.raises(CheckpointError) as error:
        ckpt_lib.check_optimizer_matches(prefix, other)
      assert str(error.value) == (
          f'checkpoint {prefix} holds the state of --optimizer={saved}, not --optimizer={other}: '
          f'resume with --optimizer={saved}, or start a new --model_dir with '
          f'--checkpoint={prefix} to train its weights with {other}')


# --- 10. converted models readable by other users ---------------------------------------------------

@pytest.mark.parametrize('extension', ['.pth', '.safetensors'])
@pytest.mark.parametrize('umask,mode', [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_converted_weights_follow_the_umask(tmp_path, extension, umask, mode):
  torch = pytest.importorskip('torch')
  if extension == '.safetensors':
    pytest.importorskip('safetensors')
  from checkpoints_conversion.tf_to_torch import save_state_dict  # pylint: disable=import-outside-toplevel
  previous = os.umask(umask)
  try:
    save_state_dict({'w': torch.zeros(2)}, str(tmp_path / f'weights{extension}'))
  finally:
    os.umask(previous)
  assert os.stat(tmp_path / f'weights{extension}').st_mode & 0o777 == mode
  assert os.listdir(tmp_path) == [f'weights{extension}']


# --- run(): found before anything is written ---------------------------------------------------------

RUN_SETTINGS = dict(dataset='digits', resnet_depth=18, image_size=8, train_batch_size=8,
                    checkpoint_steps=1, train_steps=1, use_tpu=False, seed=0, eval_batch_size=8,
                    eval_steps=1, train_mode='finetune')


def _run(model_dir, **overrides):
  config = Config(**dict(RUN_SETTINGS, model_dir=str(model_dir), **overrides))
  return run(config, strategy=tf.distribute.get_strategy())


def test_run_on_a_locked_model_dir_fails_before_writing(tmp_path):
  with lock_holder(tmp_path) as holder:
    before = _files(tmp_path)
    with pytest.raises(ModelDirError, match=f'in use by another run \\(pid {holder.pid} '):
      _run(tmp_path)
    assert _files(tmp_path) == before  # no flags, config, checkpoint or event file


@pytest.mark.parametrize('content', [b'garbage text\n', b'\x00\xff\xfe binary'])
def test_run_with_a_bad_state_file_restarts_nothing(tmp_path, content):
  _small_checkpoint(tmp_path, [np.zeros(2, np.float32)], 'ckpt-3')
  (tmp_path / 'checkpoint').write_bytes(content)
  before = _files(tmp_path)
  with pytest.raises(ModelDirError, match=f'^checkpoint state file {tmp_path}/checkpoint '):
    _run(tmp_path)
  assert _files(tmp_path) == before


def test_unknown_eval_split_is_found_before_training(tmp_path):
  model_dir = tmp_path / 'run'
  with pytest.raises(ValueError, match="unknown split 'bogus'"):
    _run(model_dir, mode='train_then_eval', eval_split='bogus')
  assert not model_dir.exists()


def test_leftovers_are_removed_at_start_up_not_when_validation_fails(tmp_path):
  (tmp_path / 'ckpt-9_temp').mkdir()
  with pytest.raises(ValueError, match="unknown split 'bogus'"):
    _run(tmp_path, train_split='bogus')
  assert (tmp_path / 'ckpt-9_temp').exists()  # validation failed: nothing touched
  result = _run(tmp_path)
  assert result.checkpoint == str(tmp_path / 'ckpt-1')
  assert not (tmp_path / 'ckpt-9_temp').exists() and not (tmp_path / md.LOCK_FILE_NAME).exists()


# --- 9. mode=eval: every checkpoint, in order, deleted ones listed ----------------------------------

def test_eval_evaluates_every_checkpoint_in_order_and_lists_the_deleted(tmp_path, caplog):
  config = Config(**dict(RUN_SETTINGS, model_dir=str(tmp_path), train_steps=4))
  strategy = tf.distribute.get_strategy()
  source = get_source('digits', image_size=8)
  task = SimCLRTask(config, source.num_classes, strategy)
  task.build_optimizer(source.num_examples('train'))
  trainer = Trainer(task, str(tmp_path), callbacks=[CheckpointSaver()])
  trainer.fit(distributed_dataset(config, source, strategy, is_training=True), 4, 1)
  assert sorted(p.name for p in tmp_path.glob('ckpt-*.index')) == [
      f'ckpt-{step}.index' for step in (1, 2, 3, 4)]

  class TrainingDeletesAsItGoes(Evaluator):
    """While ckpt-1 is evaluated, the training run's keep_checkpoint_max deletes ckpt-2."""

    def evaluate(self, checkpoint_path):
      if checkpoint_path.endswith('ckpt-1'):
        for path in tmp_path.glob('ckpt-2.*'):
          path.unlink()
      return super().evaluate(checkpoint_path)

  evaluator = TrainingDeletesAsItGoes(
      task, str(tmp_path), lambda: distributed_dataset(config, source, strategy, False),
      eval_steps=1, export=False, output_dir=str(tmp_path / 'eval'))
  with caplog.at_level(logging.INFO):
    result = evaluator.evaluate_continuously(train_steps=4, timeout=0)
  assert result['global_step'] == 4.
  assert evaluator.evaluated == [str(tmp_path / f'ckpt-{step}') for step in (1, 3, 4)]
  assert evaluator.skipped == [(str(tmp_path / 'ckpt-2'), 'deleted before evaluation')]
  assert 'Evaluated 3 checkpoint(s); skipped ckpt-2 (deleted before evaluation).' in caplog.text
  assert sorted(p.name for p in (tmp_path / 'eval').glob('result_*.json')) == [
      'result_1.json', 'result_3.json', 'result_4.json']


def test_faults_page_names_only_existing_tests():
  """docs/faults.md: every row's test exists (so the table is checked against the suite)."""
  page = open(os.path.join(str(REPO), 'docs', 'faults.md'), encoding='utf-8').read()
  rows = [line for line in page.splitlines() if line.startswith('| ') and '---' not in line][1:]
  assert len(rows) >= 15
  for row in rows:
    last_file = None
    names = re.findall(r'`(?:(test_\w+\.py))?::(test_\w+)`', row)
    assert names, row
    for file_name, test_name in names:
      last_file = file_name or last_file
      found = sorted((REPO / 'tests').glob(f'*/{last_file}'))
      assert found, f'{last_file} is not in tests/unit or tests/e2e'
      source = found[0].read_text(encoding='utf-8')
      assert f'def {test_name}(' in source, (last_file, test_name)
