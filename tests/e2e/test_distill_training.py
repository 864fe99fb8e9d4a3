"""train_mode=distill end to end: tiny R18 runs on the embedded digits, in-process.

A fine-tuned teacher (one finetune run, its checkpoint and its SavedModel) is distilled into a
student through the command a user runs; the teacher stays bit-identical, two replicas equal one
device, the student's checkpoint has a fine-tuned model's golden keys, and bad teachers are
one-line errors before anything is written.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from commands import error_line, run_main
from fixed_batch import train_on_fixed_batch
from golden_data import read_keys
from simclr_tf2.config import Config
from simclr_tf2.inference.loading import load_model
from simclr_tf2.network.model import build_model
from simclr_tf2.training.distill import DistillationTask, load_teacher

# One xdist worker runs this module, so its session-scoped runs are built once (module-scoped
# ones were built again when the worker's test order left the module and came back).
pytestmark = pytest.mark.xdist_group('test_distill_training')

TINY = ['--dataset=digits', '--resnet_depth=18', '--image_size=8', '--train_batch_size=16',
        '--checkpoint_steps=2', '--eval_steps=2', '--eval_batch_size=16', '--use_tpu=false',
        '--use_blur=false', '--seed=0', '--optimizer=momentum', '--warmup_epochs=0']


@pytest.fixture(scope='session')
def teacher_run(tmp_path_factory):
  """A fine-tuned R18 teacher (2 steps): (model_dir, checkpoint prefix, SavedModel dir)."""
  model_dir = str(tmp_path_factory.mktemp('teacher'))
  code, _, err = run_main(TINY + ['--mode=train', '--train_mode=finetune', '--train_steps=2',
                                  '--learning_rate=1.0', f'--model_dir={model_dir}'])
  assert code == 0, err
  return model_dir, os.path.join(model_dir, 'ckpt-2'), os.path.join(model_dir, 'saved_model', '2')


def _config(teacher, **overrides):
  return Config(**{**dict(dataset='digits', resnet_depth=18, image_size=8, train_batch_size=16,
                          train_steps=1, checkpoint_steps=1, use_tpu=False, use_blur=False,
                          seed=0, optimizer='momentum', warmup_epochs=0., learning_rate=0.5,
                          train_mode='distill', teacher_checkpoint=teacher,
                          distill_temperature=2., distill_label_weight=0.3), **overrides})


def _batch(size=16):
  rng = np.random.default_rng(0)
  images = rng.uniform(size=[size, 8, 8, 3]).astype(np.float32)
  labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, size)]
  return images, labels


def test_distill_command_writes_a_student_with_finetuned_golden_keys(teacher_run, tmp_path):
  _, prefix, _ = teacher_run
  model_dir = tmp_path / 'student'
  code, out, err = run_main(TINY + [
      '--mode=train_then_eval', '--train_mode=distill', f'--teacher_checkpoint={prefix}',
      '--train_steps=2', '--distill_temperature=2', '--freeze_unused_proj_head=false',
      f'--model_dir={model_dir}'])
  assert code == 0, err
  assert 'distill' in out
  # The student is a fine-tuned R18 (golden keys of the reference, optimizer slots included);
  # no teacher variable is saved.
  keys = {k: list(s) for k, s in tf.train.list_variables(str(model_dir / 'ckpt-2'))}
  golden = read_keys('r18_cifar_finetune_momentum_tfkeras221')
  assert sorted(set(keys) - set(golden)) == [] and sorted(set(golden) - set(keys)) == []
  assert all(keys[k] == golden[k] for k in golden)
  # Eval and export used the student; load_model reads its model_dir as a fine-tuned model.
  assert (model_dir / 'result.json').exists() and (model_dir / 'saved_model' / '2').is_dir()
  loaded = load_model(str(model_dir))
  assert loaded.model.has_supervised_head and loaded.global_step == 2


def test_teacher_stays_bit_identical_and_runs_in_inference_mode(teacher_run, tmp_path):
  _, prefix, _ = teacher_run
  config = _config(prefix, model_dir=str(tmp_path))
  teacher = load_teacher(config)
  before = [v.numpy().copy() for v in teacher.model.variables]
  images, labels = _batch()
  reference = load_model(prefix).model  # a second copy, never trained
  expected = reference.call_with_endpoints(tf.constant(images), training=False)['logits_sup']
  task = DistillationTask(config, teacher)
  metrics, _ = train_on_fixed_batch(task, images, labels, steps=3)
  assert int(task.global_step.numpy()) == 3
  for variable, value in zip(teacher.model.variables, before):  # BN statistics included
    np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.name)
  # What the step trains against are the inference-mode logits of the untouched teacher.
  np.testing.assert_array_equal(teacher.logits(tf.constant(images)).numpy(), expected.numpy())
  assert set(metrics) >= {'train/distill_loss', 'train/supervised_loss', 'train/supervised_acc'}
  assert np.isfinite(metrics['train/distill_loss'])


def test_teacher_from_saved_model_equals_teacher_from_checkpoint(teacher_run):
  # The command distilling from a SavedModel teacher: test_saved_model_sources.py (the
  # released form, read by the same load_teacher).
  model_dir, prefix, saved_model = teacher_run
  images = tf.constant(_batch()[0])
  logits = [load_teacher(_config(path)).logits(images).numpy()
            for path in (prefix, model_dir, saved_model)]
  np.testing.assert_allclose(logits[1], logits[0], atol=1e-5)
  np.testing.assert_allclose(logits[2], logits[0], atol=1e-5)


def test_two_replicas_match_one_device(teacher_run, two_replica_strategy, tmp_path):
  _, prefix, _ = teacher_run
  config = _config(prefix, model_dir=str(tmp_path))
  images, labels = _batch()
  one = DistillationTask(config, load_teacher(config))
  two = DistillationTask(config, load_teacher(config, two_replica_strategy), two_replica_strategy)
  assert two.strategy.num_replicas_in_sync == 2
  initial = one.model.get_weights()
  two.model.set_weights(initial)
  one_metrics, one_weights = train_on_fixed_batch(one, images, labels)
  two_metrics, two_weights = train_on_fixed_batch(two, images, labels)
  assert list(one_metrics) == list(two_metrics)
  for tag, value in one_metrics.items():
    assert two_metrics[tag] == pytest.approx(value, abs=1e-5), tag
  moved = 0
  for start, a, b in zip(initial, one_weights, two_weights):
    np.testing.assert_allclose(b, a, atol=1e-5)
    moved += not np.array_equal(a, start)
  assert moved > len(initial) // 2


def _write_model(tmp_path, name, num_classes, **flags):
  """A checkpoint of a freshly built model (no training run needed for a bad teacher)."""
  model = build_model(num_classes, resnet_depth=18, image_size=8, **flags).create_variables()
  return tf.train.Checkpoint(model=model).write(str(tmp_path / name / 'model.ckpt'))


@pytest.mark.parametrize('case, expected', [
    ('no_head', 'the teacher has no supervised head'),
    ('five_classes', 'the teacher predicts 5 classes, dataset digits has 10'),
    ('missing', 'teacher_checkpoint='),
])
def test_bad_teacher_is_a_one_line_error_before_anything_is_written(tmp_path, case, expected):
  if case == 'no_head':
    teacher = _write_model(tmp_path, case, None, lineareval_while_pretraining=False)
  elif case == 'five_classes':
    teacher = _write_model(tmp_path, case, 5, train_mode='finetune')
  else:
    teacher = str(tmp_path / 'nothing' / 'here')
  model_dir = tmp_path / 'student'
  code, _, err = run_main(TINY + ['--mode=train', '--train_mode=distill', '--train_steps=1',
                                  f'--teacher_checkpoint={teacher}', f'--model_dir={model_dir}'])
  assert code == 1
  line = error_line(err)
  assert line.startswith('error: --teacher_checkpoint=') and expected in line, line
  assert not model_dir.exists()


@pytest.mark.parametrize('flag', ['--distill_temperature=0', '--distill_temperature=nan',
                                  '--distill_label_weight=1.5', '--distill_label_weight=-1'])
def test_bad_distillation_flags_are_one_line_errors(tmp_path, flag):
  model_dir = tmp_path / 'student'
  code, _, err = run_main(TINY + ['--mode=train', '--train_mode=distill', '--train_steps=1',
                                  '--teacher_checkpoint=/x', flag, f'--model_dir={model_dir}'])
  assert code == 1 and flag.split('=')[0] in error_line(err)
  assert not model_dir.exists()


def test_label_fraction_run_records_its_subset_and_too_small_is_an_error(tmp_path):
  model_dir = tmp_path / 'ten_percent'
  args = TINY + ['--mode=train', '--train_mode=finetune', '--label_fraction=0.1',
                 '--export_saved_model=false', f'--model_dir={model_dir}']
  code, _, err = run_main(args + ['--train_steps=1'])
  assert code == 0, err
  record = json.loads((model_dir / 'label_subset.json').read_text())
  assert len(record['example_ids']) == 140  # round(0.1 * 1437 / 10) = 14 of each digit
  code, _, err = run_main(args + ['--train_steps=2', '--seed=5'])  # resumed: same subset
  assert code == 0, err
  assert json.loads((model_dir / 'label_subset.json').read_text()) == record
  small = tmp_path / 'too_small'
  code, _, err = run_main(TINY + ['--mode=train', '--train_mode=finetune', '--train_steps=1',
                                  '--label_fraction=0.003', f'--model_dir={small}'])
  assert code == 1 and error_line(err).startswith('error: --label_fraction=0.003: ')
  assert not small.exists()


# float16, the path with loss scaling: bfloat16 (no loss scale) shares its casts, and
# test_precision.py checks both precisions' variables and steps.
@pytest.mark.parametrize('precision', ['mixed_float16'])
def test_distillation_trains_at_reduced_precision(teacher_run, tmp_path, precision):
  _, prefix, _ = teacher_run
  model_dir = tmp_path / precision
  code, _, err = run_main(TINY + ['--mode=train', '--train_mode=distill', '--train_steps=2',
                                  f'--precision={precision}', f'--teacher_checkpoint={prefix}',
                                  '--export_saved_model=false', f'--model_dir={model_dir}'])
  assert code == 0, err
  # float32 variables whatever the compute precision: the same keys as a float32 student.
  reader = tf.train.load_checkpoint(str(model_dir / 'ckpt-2'))
  dtypes = reader.get_variable_to_dtype_map()
  assert {dtypes[k] for k in dtypes if k.startswith('model/')} == {tf.float32}


@pytest.mark.slow
def test_semi_supervised_demo_runs_the_three_stages(tmp_path, capsys):
  from simclr_tf2.demo import run_semi_supervised_demo  # pylint: disable=import-outside-toplevel
  # 0 epochs is one step (steps = examples * epochs // batch + 1, like the reference).
  rows = run_semi_supervised_demo(str(tmp_path), pretrain_epochs=0, finetune_steps=1,
                                  distill_epochs=0, strategy=tf.distribute.get_strategy())
  assert list(rows) == ['(a) supervised, 10% labels', '(b) pretrain + fine-tune 10%',
                        '(c) (b) distilled, no labels']
  for row in rows.values():
    assert 0 <= row['top_1'] <= 1 and row['images_per_second'] > 0
    assert row['parameters'] == rows['(a) supervised, 10% labels']['parameters']
  # Both fine-tunings train on the same recorded 10%: 14 images of each digit.
  subsets = [json.loads((tmp_path / name / 'label_subset.json').read_text())['example_ids']
             for name in ('a_supervised_10pct', 'b_pretrain_finetune_10pct')]
  assert subsets[0] == subsets[1] and len(subsets[0]) == 140
  assert 'test top-1' in capsys.readouterr().out
  assert (tmp_path / 'semi_supervised_results.json').exists()
