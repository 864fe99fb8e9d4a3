"""The absl entry point and training driver end to end (K5, K8, K9, K14, K15, K21, K27;
Kn: docs/differences.md): tiny R18 runs on the embedded `digits` dataset, in-process.

Expected values are derived by hand from the flags (learning-rate schedule, step numbers, weight
decay of the supervised head, ln(10) for a zeroed 10-class head), not read back from the code.
"""

import glob
import json
import logging
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from commands import error_line, run_main
from fixed_batch import train_on_fixed_batch
from golden_data import golden_model_tree, read_keys
from golden_data import REPO
from simclr_tf2.data import distributed_dataset
from simclr_tf2.training.evaluator import Evaluator
from simclr_tf2.training.trainer import Trainer
from simclr_tf2.network.checkpoint import object_keys
from simclr_tf2.config import Config
from simclr_tf2.data import get_source
from simclr_tf2.training.task import SimCLRTask

# One xdist worker runs this module, so its session-scoped runs are built once (module-scoped
# ones were built again when the worker's test order left the module and came back).
pytestmark = pytest.mark.xdist_group('test_run')

VALUE = '/.ATTRIBUTES/VARIABLE_VALUE'
HEAD_KERNEL = 'model/supervised_head/linear_layer/dense/kernel' + VALUE
HEAD_BIAS = 'model/supervised_head/linear_layer/dense/bias' + VALUE
STEM_KERNEL = 'model/resnet_model/initial_conv_relu_max_pool/0/conv2d/kernel' + VALUE

# Hand-derived from the flags below: digits has 1437 training images; B = 16.
NUM_TRAIN = 1437
PEAK_LR = 0.3 * 16 / 256  # learning_rate * B / 256 (linear scaling)
WARMUP_STEPS = 10 * NUM_TRAIN // 16  # warmup_epochs=10 -> 898 steps
EVAL_EXAMPLES = 2 * 16  # eval_steps * eval_batch_size
WEIGHT_DECAY = 1e-6

TINY = ['--dataset=digits', '--resnet_depth=18', '--image_size=8', '--train_batch_size=16',
        '--checkpoint_steps=2', '--eval_steps=2', '--eval_batch_size=16', '--use_tpu=false',
        '--use_blur=false', '--seed=0']
TRAIN_SCALARS = ('train/weight_decay', 'train/total_loss', 'train/supervised_loss',
                 'train/supervised_acc', 'learning_rate')
PRETRAIN_SCALARS = TRAIN_SCALARS + ('train/contrast_loss', 'train/contrast_acc',
                                    'train/contrast_entropy')
EVAL_SCALARS = ('eval/regularization_loss', 'eval/label_top_1_accuracy',
                'eval/label_top_5_accuracy')


# --- helpers ---------------------------------------------------------------------------------


def lr_at(step):
  """Warm-up part of the schedule (all these runs stop long before step 898)."""
  return PEAK_LR * step / WARMUP_STEPS


def checkpoint_steps(model_dir):
  return sorted(int(re.search(r'ckpt-(\d+)\.index$', p).group(1))
                for p in glob.glob(os.path.join(model_dir, 'ckpt-*.index')))


def read_events(model_dir):
  """{tag: [(step, summary value proto)]} over every event file of model_dir."""
  events = {}
  for path in sorted(glob.glob(os.path.join(model_dir, 'events.out.tfevents.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        events.setdefault(value.tag, []).append((event.step, value))
  return events


def scalars(events, tag):
  """[(step, float)] of a scalar tag, in write order."""
  return [(step, float(tf.make_ndarray(value.tensor))) for step, value in events.get(tag, [])]


def header_only(out):
  """What stdout holds when a run fails: the one-line header (what runs, devices, outputs)."""
  return len(out.splitlines()) == 1 and out.startswith('simclr-tf2 ')


def read_json(path):
  with open(path) as f:
    return json.load(f)


def assert_result(result, global_step, head_kernel):
  """result.json content: keys, float step, accuracies over 32 examples, L2 of the head kernel."""
  assert set(result) == set(EVAL_SCALARS) | {'global_step'}
  assert isinstance(result['global_step'], float) and result['global_step'] == global_step
  top1, top5 = result['eval/label_top_1_accuracy'], result['eval/label_top_5_accuracy']
  assert 0. <= top1 <= top5 <= 1.
  for accuracy in (top1, top5):  # a count of correct images among the 32 evaluated
    assert accuracy * EVAL_EXAMPLES == pytest.approx(round(accuracy * EVAL_EXAMPLES), abs=1e-4)
  # LARS decays everything but the supervised-head kernel itself: wd * l2_loss(head kernel).
  expected = WEIGHT_DECAY * 0.5 * float(np.sum(np.square(head_kernel.astype(np.float64))))
  assert result['eval/regularization_loss'] == pytest.approx(expected, rel=1e-4, abs=1e-12)


# --- 1. pretrain -> finetune -> eval through the entry point ---------------------------------

PRETRAIN_STEPS = 3  # checkpoint_steps=2: checkpoints at 2 and 3 (no overshoot to 4, K8)
FINETUNE_STEPS = 3
FINETUNE_ARGS = ['--train_mode=finetune', '--fine_tune_after_block=4',
                 f'--train_steps={FINETUNE_STEPS}']


@pytest.fixture(scope='session')
def pretrain_run(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp('pretrain'))
  code, out, err = run_main(TINY + ['--mode=train_then_eval', '--train_mode=pretrain',
                                    f'--train_steps={PRETRAIN_STEPS}', f'--model_dir={model_dir}'])
  return model_dir, code, out, err


@pytest.fixture(scope='session')
def finetune_run(pretrain_run, tmp_path_factory):
  pretrain_dir = pretrain_run[0]
  model_dir = str(tmp_path_factory.mktemp('finetune'))
  code, out, err = run_main(TINY + FINETUNE_ARGS + [
      '--mode=train', f'--checkpoint={pretrain_dir}', '--zero_init_logits_layer=true',
      f'--model_dir={model_dir}'])
  return model_dir, code, out, err


def test_pretrain_train_then_eval_writes_every_output(pretrain_run):
  model_dir, code, out, err = pretrain_run
  assert code == 0, err
  assert checkpoint_steps(model_dir) == [2, PRETRAIN_STEPS]
  assert tf.train.latest_checkpoint(model_dir) == os.path.join(model_dir, 'ckpt-3')
  last = tf.train.load_checkpoint(os.path.join(model_dir, 'ckpt-3'))
  assert last.get_tensor('global_step' + VALUE) == PRETRAIN_STEPS

  result = read_json(os.path.join(model_dir, 'result.json'))
  assert_result(result, 3., last.get_tensor(HEAD_KERNEL))
  assert read_json(os.path.join(model_dir, 'result_3.json')) == result
  # main's closing summary: the metrics and where the outputs are
  assert out.splitlines()[-5].startswith('done in ') and 'eval/label_top_1_accuracy' in out
  assert f'  log: {os.path.join(model_dir, "log.txt")}' in out.splitlines()
  assert os.path.isfile(os.path.join(model_dir, 'log.txt'))
  assert os.path.isfile(os.path.join(model_dir, 'saved_model', '3', 'saved_model.pb'))
  assert os.listdir(os.path.join(model_dir, 'saved_model')) == ['3']

  flag_values = read_json(os.path.join(model_dir, 'flags.json'))
  assert flag_values['train_steps'] == 3 and flag_values['dataset'] == 'digits'
  assert flag_values['mode'] == 'train_then_eval' and flag_values['resnet_depth'] == 18
  assert 'verbosity' in flag_values  # absl's own flags too (K28)
  config = read_json(os.path.join(model_dir, 'config.json'))
  assert config['train_mode'] == 'pretrain' and config['image_size'] == 8
  assert config['seed'] == 0 and config['checkpoint_steps'] == 2

  events = read_events(model_dir)
  for tag in PRETRAIN_SCALARS:
    assert [step for step, _ in scalars(events, tag)] == [2, 3], tag
    assert all(math.isfinite(v) for _, v in scalars(events, tag)), tag
  # learning_rate = schedule(global_step), written at global_step (docs/training.md).
  for step, value in scalars(events, 'learning_rate'):
    assert value == pytest.approx(lr_at(step), rel=1e-5)
  # Image summary at the last step of each full block ((iterations + 1) % 2 == 0): step 2 only.
  images = events['image']
  assert [step for step, _ in images] == [2]
  encoded = tf.make_ndarray(images[0][1].tensor)
  assert list(encoded[:2]) == [b'8', b'8'] and len(encoded) == 2 + 3  # width, height, 3 images
  for tag in EVAL_SCALARS:
    [(step, value)] = scalars(events, tag)
    assert step == 3 and value == pytest.approx(result[tag], rel=1e-6)


def test_finetune_from_pretrain_zero_inits_head_and_eval_mode_evaluates(finetune_run,
                                                                         pretrain_run):
  model_dir, code, out, err = finetune_run
  assert code == 0, err
  assert out.splitlines()[1].startswith('done in ') and 'accuracy' not in out  # no result
  assert checkpoint_steps(model_dir) == [2, 3]
  assert os.path.isfile(os.path.join(model_dir, 'saved_model', '3', 'saved_model.pb'))
  assert not os.path.exists(os.path.join(model_dir, 'result.json'))

  # zero_init_logits_layer (K5): the restored head is zeroed before the first step, so the first
  # block (steps 0 and 1; the step-0 update has learning rate 0) sees all-zero logits over 10
  # classes: cross-entropy ln(10), and no weight decay on a zero kernel. The reference (head
  # restored from the pretraining file, not zeroed) gives a different loss.
  events = read_events(model_dir)
  first_block = {tag: dict(scalars(events, tag))[2] for tag in TRAIN_SCALARS}
  assert first_block['train/supervised_loss'] == pytest.approx(math.log(10.), abs=1e-5)
  assert first_block['train/total_loss'] == pytest.approx(math.log(10.), abs=1e-5)
  assert first_block['train/weight_decay'] == 0.
  assert 'train/contrast_loss' not in events and 'image' in events
  for step, value in scalars(events, 'learning_rate'):
    assert value == pytest.approx(lr_at(step), rel=1e-5)

  # The frozen encoder (fine_tune_after_block=4) still holds the pretraining values.
  pretrained = tf.train.load_checkpoint(os.path.join(pretrain_run[0], 'ckpt-3'))
  finetuned = tf.train.load_checkpoint(os.path.join(model_dir, 'ckpt-3'))
  np.testing.assert_array_equal(finetuned.get_tensor(STEM_KERNEL),
                                pretrained.get_tensor(STEM_KERNEL))
  assert finetuned.get_tensor('global_step' + VALUE) == 3

  code, out, err = run_main(TINY + FINETUNE_ARGS + [
      '--mode=eval', '--eval_timeout=60', f'--model_dir={model_dir}'])
  assert code == 0, err
  eval_dir = os.path.join(model_dir, 'eval')
  result = read_json(os.path.join(eval_dir, 'result.json'))
  assert_result(result, 3., finetuned.get_tensor(HEAD_KERNEL))
  assert read_json(os.path.join(eval_dir, 'result_3.json')) == result
  assert f'eval/label_top_1_accuracy {result["eval/label_top_1_accuracy"]:.4g}' in out
  assert f'results: {os.path.join(eval_dir, "result.json")}' in out
  # Everything the evaluation writes is in model_dir/eval; the training run's files are untouched.
  assert read_json(os.path.join(eval_dir, 'flags.json'))['mode'] == 'eval'
  assert os.path.isfile(os.path.join(eval_dir, 'log.txt'))
  assert os.path.isfile(os.path.join(eval_dir, 'saved_model', '3', 'saved_model.pb'))
  assert read_json(os.path.join(model_dir, 'flags.json'))['mode'] != 'eval'
  assert not os.path.exists(os.path.join(model_dir, 'result.json'))
  assert os.listdir(os.path.join(model_dir, 'saved_model')) == ['3']
  events = read_events(eval_dir)
  for tag in EVAL_SCALARS:  # every checkpoint, in order
    assert [step for step, _ in scalars(events, tag)] == [2, 3], tag
  assert checkpoint_steps(model_dir) == [2, 3]  # evaluation writes no checkpoint

  # One model given by --checkpoint: the training run's export evaluates to the same numbers.
  one_dir = os.path.join(os.path.dirname(model_dir), 'eval_one_saved_model')
  code, out, err = run_main(TINY + FINETUNE_ARGS + [
      '--mode=eval', f'--checkpoint={os.path.join(model_dir, "saved_model", "3")}',
      f'--model_dir={one_dir}'])
  assert code == 0, err
  assert read_json(os.path.join(one_dir, 'eval', 'result.json')) == result
  assert os.listdir(one_dir) == ['eval']


def test_evaluation_progress_bar_shows_steps_top_1_and_images_per_second(finetune_run,
                                                                        tmp_path, capsys):
  config = Config(dataset='digits', resnet_depth=18, image_size=8, train_mode='finetune',
                  fine_tune_after_block=4, eval_batch_size=16, use_tpu=False, use_blur=False)
  strategy = tf.distribute.get_strategy()
  source = get_source('digits', image_size=8)
  evaluator = Evaluator(
      SimCLRTask(config, 10, strategy), str(tmp_path),
      lambda: distributed_dataset(config, source, strategy, is_training=False),
      eval_steps=3, export=False, progress_bar=True)
  result = evaluator.evaluate(os.path.join(finetune_run[0], 'ckpt-3'))
  lines = capsys.readouterr().out.splitlines()  # not a terminal: one plain line per update
  assert [line.split('  ')[:2] for line in lines] == [
      ['eval', '[######..............]'], ['eval', '[#############.......]'],
      ['eval', '[####################]']]
  assert lines[-1].startswith('eval  [####################]  3/3 steps  top-1 ')
  assert f'top-1 {result["eval/label_top_1_accuracy"]:.4g}' in lines[-1]
  assert all('images/s' in line for line in lines[1:])  # measured from the first update on


@pytest.mark.parametrize('zero_init', [True, False])
def test_restore_from_checkpoint_zeroes_head_only_with_flag(pretrain_run, tmp_path, zero_init):
  """K5 at the unit level: after the --checkpoint restore path the head is exactly zero (the
  reference restored the file's non-zero head and zeroed nothing)."""
  pretrain_dir = pretrain_run[0]
  config = Config(dataset='digits', resnet_depth=18, image_size=8, train_batch_size=16,
                  train_steps=3, checkpoint_steps=2, use_tpu=False, use_blur=False, seed=0,
                  train_mode='finetune', fine_tune_after_block=4, checkpoint=pretrain_dir,
                  zero_init_logits_layer=zero_init, model_dir=str(tmp_path))
  task = SimCLRTask(config, num_classes=10)
  task.build_optimizer(NUM_TRAIN)
  assert Trainer(task, str(tmp_path)).restore() == os.path.join(pretrain_dir, 'ckpt-3')
  file = tf.train.load_checkpoint(os.path.join(pretrain_dir, 'ckpt-3'))
  model = {key: variable.numpy() for key, variable in object_keys(model=task.model).items()}
  assert np.abs(file.get_tensor(HEAD_KERNEL)).max() > 1e-3  # the file's head is not zero
  if zero_init:
    np.testing.assert_array_equal(model[HEAD_KERNEL], 0.)
    np.testing.assert_array_equal(model[HEAD_BIAS], 0.)
  else:
    np.testing.assert_array_equal(model[HEAD_KERNEL], file.get_tensor(HEAD_KERNEL))
    np.testing.assert_array_equal(model[HEAD_BIAS], file.get_tensor(HEAD_BIAS))
  np.testing.assert_array_equal(model[STEM_KERNEL], file.get_tensor(STEM_KERNEL))


# --- 2. two replicas == one device ------------------------------------------------------------

def test_two_replicas_match_one_device_on_a_fixed_batch(two_replica_strategy, tmp_path):
  # LARS (the default): its excluded variables (batch norm, biases, head) take plain momentum
  # steps, so a wrong gradient scale across replicas shows there.
  # warmup_epochs=0: the first step uses the peak rate (with warm-up it is 0 and nothing moves).
  config = Config(dataset='digits', resnet_depth=18, image_size=8, train_batch_size=16,
                  train_steps=1, checkpoint_steps=1, use_tpu=False, use_blur=False, seed=0,
                  warmup_epochs=0, learning_rate=3.0, model_dir=str(tmp_path))
  rng = np.random.default_rng(0)
  images = rng.uniform(size=[16, 8, 8, 6]).astype(np.float32)
  labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 16)]
  one_device = SimCLRTask(config, num_classes=10)
  two_devices = SimCLRTask(config, num_classes=10, strategy=two_replica_strategy)
  assert two_devices.strategy.num_replicas_in_sync == 2
  initial = one_device.model.get_weights()
  two_devices.model.set_weights(initial)
  names = [v.name for v in one_device.model.weights]

  one_metrics, one_weights = train_on_fixed_batch(one_device, images, labels)
  two_metrics, two_weights = train_on_fixed_batch(two_devices, images, labels)

  assert list(one_metrics) == list(two_metrics)
  for tag, value in one_metrics.items():
    assert two_metrics[tag] == pytest.approx(value, rel=1e-4, abs=1e-6), tag
  moved = 0
  for name, start, one, two in zip(names, initial, one_weights, two_weights):
    one_delta, two_delta = one - start, two - start
    scale = np.linalg.norm(one_delta)
    if scale == 0:
      np.testing.assert_array_equal(two_delta, 0., err_msg=name)
      continue
    moved += 1
    assert np.linalg.norm(two_delta - one_delta) <= 2e-3 * scale + 1e-7, name
  assert moved > len(names) // 2  # the step really changed most variables


# --- 3. finetune from an official-layout checkpoint -------------------------------------------

def _plausible_value(key, shape, rng):
  """Values a trained network could have, so the frozen R18 stays finite in inference mode."""
  leaf = key[:-len(VALUE)].rsplit('/', 1)[-1]
  if leaf in ('gamma', 'moving_variance'):
    return rng.uniform(0.5, 1.5, shape)
  if leaf == 'kernel':
    return rng.standard_normal(shape) / math.sqrt(np.prod(shape[:-1]))
  return rng.normal(0., 0.1, shape)


@pytest.fixture(scope='session')
def golden_checkpoint(tmp_path_factory):
  """A checkpoint in the official layout (golden r18_cifar_pretrain_lars keys, random values)."""
  tree, values = golden_model_tree(read_keys('r18_cifar_pretrain_lars'), np.random.default_rng(0),
                                   draw=_plausible_value)
  directory = str(tmp_path_factory.mktemp('official'))
  prefix = tf.train.Checkpoint(model=tree).save(os.path.join(directory, 'model.ckpt'))
  return directory, prefix, values


@pytest.mark.parametrize('form', ['prefix', 'directory'])
def test_finetune_from_official_layout_checkpoint(golden_checkpoint, tmp_path, form):
  directory, prefix, values = golden_checkpoint
  path = prefix if form == 'prefix' else directory  # K14: a directory works too
  model_dir = str(tmp_path / 'ft')
  code, _, err = run_main(TINY + ['--mode=train', '--train_mode=finetune',
                                  '--fine_tune_after_block=4', '--train_steps=2',
                                  '--export_saved_model=false', f'--checkpoint={path}',
                                  f'--model_dir={model_dir}'])
  assert code == 0, err
  assert checkpoint_steps(model_dir) == [2]
  trained = tf.train.load_checkpoint(os.path.join(model_dir, 'ckpt-2'))
  encoder = [p for p in values if p.startswith('resnet_model/')]
  assert len(encoder) > 100
  # Frozen encoder, batch-norm statistics included (K6), and the unused projection head (K7).
  for path_below_model, value in values.items():
    if not path_below_model.startswith('supervised_head/'):
      np.testing.assert_array_equal(trained.get_tensor(f'model/{path_below_model}{VALUE}'), value,
                                    err_msg=path_below_model)
  # The head had the file's shape, so it was restored (K15) and then trained a little.
  head = trained.get_tensor(HEAD_KERNEL)
  file_head = values['supervised_head/linear_layer/dense/kernel']
  assert not np.array_equal(head, file_head)
  np.testing.assert_allclose(head, file_head, atol=1e-2)


# --- 4. interrupt and resume -------------------------------------------------------------------

def test_interrupted_run_resumes_to_exactly_train_steps(tmp_path, monkeypatch):
  model_dir = str(tmp_path / 'resume')
  args = TINY + ['--mode=train', '--train_steps=5', f'--model_dir={model_dir}']
  original_save = tf.train.CheckpointManager.save
  saved = []

  def interrupt_on_second_save(self, checkpoint_number=None, **kwargs):
    if saved:
      raise KeyboardInterrupt  # killed while block 2 ran: its state never reaches the disk
    saved.append(checkpoint_number)
    return original_save(self, checkpoint_number=checkpoint_number, **kwargs)

  monkeypatch.setattr(tf.train.CheckpointManager, 'save', interrupt_on_second_save)
  with pytest.raises(KeyboardInterrupt):
    run_main(args)
  assert saved == [2] and checkpoint_steps(model_dir) == [2]

  resumed = []

  def record(self, checkpoint_number=None, **kwargs):
    resumed.append(checkpoint_number)
    return original_save(self, checkpoint_number=checkpoint_number, **kwargs)

  monkeypatch.setattr(tf.train.CheckpointManager, 'save', record)
  code, _, err = run_main(args)
  assert code == 0, err
  # Resumed from step 2 (a fresh start would save 2 again); last block 1 step, not 2 (K8).
  assert resumed == [4, 5]
  assert checkpoint_steps(model_dir) == [2, 4, 5]
  assert tf.train.latest_checkpoint(model_dir) == os.path.join(model_dir, 'ckpt-5')
  reader = tf.train.load_checkpoint(os.path.join(model_dir, 'ckpt-5'))
  assert reader.get_tensor('global_step' + VALUE) == 5
  events = read_events(model_dir)
  assert [step for step, _ in scalars(events, 'train/total_loss')] == [2, 4, 5]
  assert scalars(events, 'learning_rate') == [
      (step, pytest.approx(lr_at(step), rel=1e-5)) for step in (2, 4, 5)]
  assert os.listdir(os.path.join(model_dir, 'saved_model')) == ['5']


# --- 5. wrong architecture ---------------------------------------------------------------------

def test_wrong_architecture_checkpoint_is_a_one_line_error(pretrain_run, tmp_path):
  model_dir = tmp_path / 'r34'
  code, out, err = run_main(TINY + ['--mode=train', '--train_mode=finetune', '--train_steps=2',
                                    '--resnet_depth=34', f'--checkpoint={pretrain_run[0]}',
                                    f'--model_dir={model_dir}'])
  assert code == 1 and header_only(out)
  line = error_line(err)
  assert line.startswith('error: checkpoint ') and 'does not match the model' in line
  assert 'missing from the file' in line and 'block_group' in line  # R34 has more blocks
  assert 'resnet_depth' in line
  # Found before anything was written: the model_dir the run created is gone again.
  assert not model_dir.exists()


# --- 6. bad flag values ------------------------------------------------------------------------

def test_unknown_enum_value_fails_at_parse_time():
  code, _, err = run_main(['--train_mode=foo'])
  assert code == 1 and 'train_mode' in error_line(err)


def test_unknown_enum_value_on_the_real_command_line(tmp_path):
  model_dir = tmp_path / 'cli'
  env = {**os.environ, 'PYTHONPATH': str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''),
         'TF_CPP_MIN_LOG_LEVEL': '2'}
  process = subprocess.run(
      [sys.executable, '-m', 'simclr_tf2.run', '--train_mode=foo', '--use_tpu=false',
       f'--model_dir={model_dir}'], cwd=str(REPO), env=env, capture_output=True, text=True,
      timeout=120)
  assert process.returncode != 0
  assert 'Traceback' not in process.stderr
  lines = [line for line in process.stderr.splitlines() if line.strip()]
  assert len(lines) <= 2, lines  # absl: the error, then "Pass --helpshort ..."
  assert any('--train_mode=foo' in line and 'pretrain' in line and 'finetune' in line
             for line in lines), lines
  assert not model_dir.exists()


@pytest.mark.parametrize('args, expected', [
    (['--image_size=0'], "error: --image_size=0: must be >= 1"),
    (['--checkpoint_steps=0', '--checkpoint_epochs=0'],
     'error: --checkpoint_steps=0: and checkpoint_epochs=0 leave no steps per loop'),
    (['--color_jitter_strength=2'], 'error: --color_jitter_strength=2.0: must be in [0, 1.25]'),
])
def test_invalid_flag_values_are_one_line_errors_before_training(tmp_path, args, expected):
  model_dir = tmp_path / 'bad'
  code, out, err = run_main(TINY + ['--mode=train', '--train_steps=2',
                                    f'--model_dir={model_dir}'] + args)
  assert code == 1 and out == ''  # flags are checked before anything is printed
  assert error_line(err).startswith(expected)
  assert not model_dir.exists()  # nothing written: no flags.json, no checkpoint


# --- 7. eval without a head; NaN guard ---------------------------------------------------------

def test_eval_mode_without_supervised_head_is_a_clear_error(tmp_path):
  model_dir = tmp_path / 'nohead'
  code, out, err = run_main(TINY + ['--mode=eval', '--train_mode=pretrain', '--train_steps=2',
                                    '--lineareval_while_pretraining=false', '--eval_timeout=1',
                                    f'--model_dir={model_dir}'])
  assert code == 1 and header_only(out)
  line = error_line(err)
  assert line.startswith('error: mode=eval needs a supervised head')
  assert 'lineareval_while_pretraining' in line
  assert checkpoint_steps(str(model_dir)) == []


def test_non_finite_loss_stops_training_without_saving_it(tmp_path):
  model_dir = str(tmp_path / 'nan')
  # No warm-up and an absurd rate: the first update (finite loss) blows the weights up, so the
  # second step's loss is not finite.
  code, out, err = run_main(TINY + ['--mode=train', '--train_steps=3', '--checkpoint_steps=1',
                                    '--optimizer=momentum', '--learning_rate=1e30',
                                    '--warmup_epochs=0', f'--model_dir={model_dir}'])
  assert code == 1 and header_only(out)
  line = error_line(err)
  assert 'not finite' in line
  nan_step = int(re.search(r'at step (\d+)', line).group(1))
  assert nan_step == 2
  assert checkpoint_steps(model_dir) == [1]  # the last finite block's state only
  assert os.path.join(model_dir, 'ckpt-1') in line  # the message names the kept checkpoint
  events = read_events(model_dir)
  [(step, loss)] = scalars(events, 'train/total_loss')
  assert step == 1 and math.isfinite(loss)
  assert not os.path.exists(os.path.join(model_dir, 'saved_model'))


# --- 7. resuming with other settings ----------------------------------------------------------

def test_resume_refuses_model_changes_and_records_other_changes(tmp_path, caplog):
  model_dir = tmp_path / 'run'
  args = TINY + ['--mode=train', '--export_saved_model=false', '--train_steps=2',
                 f'--model_dir={model_dir}']
  code, _, err = run_main(args)
  assert code == 0, err
  assert not (model_dir / 'saved_model').exists()  # checkpoints only
  config_before = (model_dir / 'config.json').read_bytes()
  files_before = sorted(p.name for p in model_dir.iterdir())

  # A model change: refused before anything is written, the differences named.
  code, _, err = run_main(args[:1] + ['--resnet_depth=34'] + args[2:])
  assert code == 1
  line = error_line(err)
  assert "resnet_depth 18 -> 34" in line and 'new --model_dir' in line
  assert (model_dir / 'config.json').read_bytes() == config_before
  assert sorted(p.name for p in model_dir.iterdir()) == files_before

  # Other changes: one warning line, kept in the settings history, then config.json.
  with caplog.at_level(logging.WARNING):
    code, _, err = run_main(args[:-2] + ['--train_steps=3', '--learning_rate=0.5',
                                         f'--model_dir={model_dir}'])
  assert code == 0, err
  assert [record.getMessage() for record in caplog.records if 'changed settings' in
          record.getMessage()] == [
              'Resuming at step 2 with changed settings: learning_rate 0.3 -> 0.5, train_steps '
              '2 -> 3 (kept in settings_history.jsonl).']
  history = [json.loads(line) for line in
             (model_dir / 'settings_history.jsonl').read_text().splitlines()]
  assert len(history) == 1 and history[0]['global_step'] == 2
  assert history[0]['changes'] == {'learning_rate': {'from': 0.3, 'to': 0.5},
                                   'train_steps': {'from': 2, 'to': 3}}
  assert read_json(model_dir / 'config.json')['train_steps'] == 3
  assert checkpoint_steps(str(model_dir))[-1] == 3
