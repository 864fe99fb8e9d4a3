"""SavedModels wherever a checkpoint is taken (#25, K32): `--checkpoint` of simclr-tf2, load_model,
simclr-export-saved-model and simclr-convert-to-pytorch read this project's exports and the
official format, strictly; TF1 files and foreign SavedModels get one-line errors.

The official-format SavedModels are written here as the reference's export does (model.md §8): a
tf.Module root holding the Keras model as `.model`, `trainable_variables_list` (filled, or EMPTY
as users report for the released ones) and a tf.function `__call__(inputs, trainable)`, saved
with tf.saved_model.save. Its variable list is checked against the reference's own export
(tests/data/golden/official_savedmodel_r18_cifar.variables.txt).
"""

import ast
import functools
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

torch = pytest.importorskip('torch')

import session_scratch  # noqa: E402
from commands import run_cli, run_main
from golden_data import GOLDEN_DIR, REFERENCE_PARITY, plausible_value  # noqa: E402
from checkpoints_conversion import convert_to_pytorch  # noqa: E402
from checkpoints_conversion import export_saved_model as export_cli  # noqa: E402
from checkpoints_conversion.torch_resnet import SimCLRTorch  # noqa: E402
from simclr_tf2.config import Config  # noqa: E402
from simclr_tf2.data import distributed_dataset, get_source  # noqa: E402
from simclr_tf2.errors import CheckpointError  # noqa: E402
from simclr_tf2.inference.loading import load_model  # noqa: E402
from simclr_tf2.network.checkpoint import object_keys  # noqa: E402
from simclr_tf2.network.model import build_model  # noqa: E402
from simclr_tf2.training.distill import load_teacher  # noqa: E402

# One xdist worker runs this module, so its session-scoped runs are built once (module-scoped
# ones were built again when the worker's test order left the module and came back).
pytestmark = pytest.mark.xdist_group('test_saved_model_sources')

VALUE = '/.ATTRIBUTES/VARIABLE_VALUE'
NUM_CLASSES = 10  # digits
SIZE = 8  # images fed to the CIFAR-stem models (shapes do not depend on it)
R50_SIZE = 40  # above 32 px: ImageNet stem (deep with SK), as the released models
# Every run: tiny R18 on the embedded digits data, one device, no blur (cheap and deterministic).
TINY = ['--dataset=digits', f'--image_size={SIZE}', '--train_batch_size=16',
        '--checkpoint_steps=2', '--eval_steps=1', '--eval_batch_size=16', '--use_tpu=false',
        '--use_blur=false', '--seed=0']
R18 = dict(resnet_depth=18, image_size=32)
R50_SK = dict(resnet_depth=50, image_size=R50_SIZE, sk_ratio=0.0625)
ARCH_FLAGS = {'r18': ['--resnet_depth=18'],
              'r50_sk': ['--resnet_depth=50', f'--image_size={R50_SIZE}', '--sk_ratio=0.0625']}
# Reading an R50 with SK through the object graph is what differs by architecture (the load_model
# test); the commands built on that reading are architecture-blind and are tested on the R18.


class OfficialExport(tf.Module):
  """The reference's exported root (its `build_saved_model`): the Keras model, its trainable
  variables at export time, and the two traced calls."""

  def __init__(self, model, trainable_variables):
    super().__init__()
    self.model = model
    self.trainable_variables_list = trainable_variables

  @tf.function
  def __call__(self, inputs, trainable):
    return self.model.call_with_endpoints(inputs, training=trainable)


def _plausible_weights(model, seed=0):
  """Trained-looking values everywhere (BN statistics included), so errors cannot hide."""
  rng = np.random.default_rng(seed)
  for key, variable in object_keys(model=model).items():
    variable.assign(plausible_value(key, variable.shape.as_list(), rng).astype(np.float32))


@functools.lru_cache(maxsize=None)
def official_saved_model(arch: str, filled: bool, num_classes: int = NUM_CLASSES,
                         ft_proj_selector: int = 0):
  """(Keras model, export dir) of an official-format SavedModel, written once per session; with
  `ft_proj_selector` a fine-tuned model whose head reads that projection layer."""
  flags = {'r18': R18, 'r50_sk': R50_SK}[arch]
  if ft_proj_selector:
    flags = dict(flags, train_mode='finetune', ft_proj_selector=ft_proj_selector)
  model = build_model(num_classes, **flags, **REFERENCE_PARITY).create_variables()
  _plausible_weights(model)
  module = OfficialExport(model, model.trainable_variables if filled else [])
  spec = tf.TensorSpec([None, None, None, 3], tf.float32)
  for trainable in (True, False):
    module.__call__.get_concrete_function(spec, trainable)
  directory = os.path.join(
      session_scratch.folder('official_saved_models'), f'{arch}_{"filled" if filled else "empty"}_{num_classes}_{ft_proj_selector}')
  tf.saved_model.save(module, directory)
  return model, directory


def images(size, batch=4, seed=3):
  return tf.random.stateless_uniform([batch, size, size, 3], seed=[seed, 0])


def read_golden_variables():
  rows = {}
  for line in (GOLDEN_DIR / 'official_savedmodel_r18_cifar.variables.txt').read_text().splitlines():
    if line.strip() and not line.startswith('#'):
      key, shape = line.split(' ', 1)
      rows[key] = [int(d) for d in shape.strip('[]').split(',') if d.strip()]
  return rows


def saved_values(model):
  """{path below model/: value} the SavedModel was written with."""
  return {key[len('model/'):-len(VALUE)]: v.numpy() for key, v in object_keys(model=model).items()}


# --- the official format itself ----------------------------------------------------------------

@pytest.mark.parametrize('filled', [True, False], ids=['filled', 'empty'])
def test_official_format_variables(filled):
  _, directory = official_saved_model('r18', filled)
  listed = {k: list(s) for k, s in tf.train.list_variables(
      os.path.join(directory, 'variables', 'variables'))}
  golden = read_golden_variables()
  if filled:  # exactly the reference's export, names included
    assert listed == golden
  else:  # nothing under trainable_variables_list: every variable under model/ (upstream #116)
    assert not any(k.startswith('trainable_variables_list/') for k in listed)
    assert sorted(listed.values()) == sorted(golden.values())


# --- load_model / eval ---------------------------------------------------------------------------

@pytest.mark.parametrize('arch,filled', [
    ('r18', True), ('r18', False),
    # The deep SK variant once, in the released SavedModels' form (empty variable list).
    pytest.param('r50_sk', False, marks=pytest.mark.slow)], ids=['filled-r18', 'empty-r18',
                                                                  'empty-r50_sk'])
def test_load_model_reproduces_saved_model_outputs(arch, filled):
  model, directory = official_saved_model(arch, filled)
  loaded = load_model(directory)  # no flags: everything detected from the variables
  flags = {'r18': R18, 'r50_sk': R50_SK}[arch]
  for name in ('resnet_depth', 'sk_ratio'):
    assert getattr(loaded.config, name) == flags.get(name, 0.)
  assert loaded.global_step is None and loaded.path == directory
  restored = saved_values(loaded.model)
  for path, value in saved_values(model).items():
    np.testing.assert_array_equal(restored[path], value, err_msg=path)
  x = images(SIZE if arch == 'r18' else R50_SIZE)
  expected = tf.saved_model.load(directory)(x, trainable=False)
  actual = tf.function(lambda x: loaded.model.call_with_endpoints(x, training=False))(x)
  scale = max(1., float(np.max(np.abs(expected['logits_sup']))))
  np.testing.assert_allclose(actual['logits_sup'], expected['logits_sup'], rtol=0,
                             atol=1e-6 * scale)
  np.testing.assert_allclose(actual['final_avg_pool'], expected['final_avg_pool'], rtol=0,
                             atol=1e-6 * max(1., float(np.max(np.abs(expected['final_avg_pool'])))))


def test_load_model_into_mirrored_variables(two_replica_strategy):
  """Restoring from a SavedModel assigns mirrored (and sync-on-read BN) variables on every
  replica, as a multi-device run needs."""
  model, directory = official_saved_model('r18', False)
  loaded = load_model(directory, strategy=two_replica_strategy)
  restored = object_keys(model=loaded.model)
  for key, variable in object_keys(model=model).items():
    for replica_value in two_replica_strategy.experimental_local_results(restored[key]):
      np.testing.assert_array_equal(replica_value.numpy(), variable.numpy(), err_msg=key)


def test_given_flags_must_match_saved_model():
  _, directory = official_saved_model('r18', True)
  with pytest.raises(CheckpointError, match=r'^SavedModel .* does not match the model: ') as info:
    load_model(directory, resnet_depth=34)
  assert '\n' not in str(info.value)
  with pytest.raises(CheckpointError, match='does not match the model') as info:
    load_model(directory, proj_out_dim=64)
  assert 'proj' in str(info.value) and '\n' not in str(info.value)


# --- simclr-tf2 --checkpoint=<SavedModel> --------------------------------------------------------

def test_finetune_starts_from_saved_model_weights(tmp_path):
  """Full fine-tuning at learning rate 0: every trainable variable of the first checkpoint is the
  SavedModel's, bit for bit (supervised head included: same class count). A SavedModel with its
  variable list filled (as this project's exports); the released form (empty list) is read by
  the same load_model (test_load_model_reproduces_saved_model_outputs) and trained from below."""
  arch = 'r18'
  model, directory = official_saved_model(arch, True)
  model_dir = str(tmp_path / 'ft')
  code, _, err = run_main(TINY + ARCH_FLAGS[arch] + [
                                  '--mode=train', '--train_mode=finetune',
                                  '--fine_tune_after_block=-1', '--learning_rate=0',
                                  '--weight_decay=0', '--train_steps=2',
                                  '--export_saved_model=false',
                                  f'--checkpoint={directory}', f'--model_dir={model_dir}'])
  assert code == 0, err
  trained = tf.train.load_checkpoint(os.path.join(model_dir, 'ckpt-2'))
  keys = object_keys(model=model)
  trainable = {id(v) for v in model.trainable_variables}
  checked = 0
  for key, variable in keys.items():
    if id(variable) in trainable:
      np.testing.assert_array_equal(trained.get_tensor(key), variable.numpy(), err_msg=key)
      checked += 1
  assert checked == len(model.trainable_variables) > 60
  assert not os.path.exists(os.path.join(model_dir, 'saved_model'))  # checkpoints only


def test_linear_eval_from_released_style_saved_model(tmp_path, caplog):
  """The released models (empty variable list) carry a 1000-class head: a linear evaluation on
  other classes keeps the encoder and its statistics exactly, starts a fresh head, and
  evaluates."""
  arch = 'r18'
  model, directory = official_saved_model(arch, False, num_classes=5)
  model_dir = str(tmp_path / 'lineval')
  code, _, err = run_main(TINY + ARCH_FLAGS[arch] + [
                                  '--mode=train_then_eval', '--train_mode=finetune',
                                  '--fine_tune_after_block=4',
                                  '--zero_init_logits_layer=true', '--train_steps=2',
                                  f'--checkpoint={directory}', f'--model_dir={model_dir}'])
  assert code == 0, err
  assert 'Supervised head not restored' in caplog.text  # 5 classes in the file, 10 in digits
  trained = tf.train.load_checkpoint(os.path.join(model_dir, 'ckpt-2'))
  encoder = {k: v for k, v in object_keys(model=model).items()
             if k.startswith('model/resnet_model/')}
  assert len(encoder) > 100
  for key, variable in encoder.items():  # frozen encoder, batch-norm statistics included
    np.testing.assert_array_equal(trained.get_tensor(key), variable.numpy(), err_msg=key)
  assert trained.get_variable_to_shape_map()[
      'model/supervised_head/linear_layer/dense/kernel' + VALUE] == [
          512 if arch == 'r18' else 2048, NUM_CLASSES]
  assert os.path.exists(os.path.join(model_dir, 'saved_model', '2', 'saved_model.pb'))


def test_run_refuses_mismatching_saved_model_in_one_line(tmp_path):
  _, directory = official_saved_model('r18', False)
  code, _, err = run_main(TINY + ['--mode=train', '--train_mode=finetune', '--resnet_depth=34',
                                  '--train_steps=2', f'--checkpoint={directory}',
                                  f'--model_dir={tmp_path / "bad"}'])
  assert code == 1
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: SavedModel ')
  assert 'resnet_depth' in lines[0]
  assert not os.path.exists(tmp_path / 'bad' / 'ckpt-2.index')


def test_eval_mode_scores_the_saved_models_own_logits(tmp_path):
  """--mode=eval --checkpoint=<released-style SavedModel>: the top-1/top-5 of the SavedModel's
  own logits_sup on the same eval batch, written into model_dir/eval."""
  _, directory = official_saved_model('r18', False)
  model_dir = tmp_path / 'eval_released'
  code, _, err = run_main(TINY + ['--mode=eval', '--train_mode=pretrain', '--resnet_depth=18',
                                  f'--checkpoint={directory}', f'--model_dir={model_dir}'])
  assert code == 0, err
  config = Config(dataset='digits', image_size=SIZE, eval_batch_size=16, use_tpu=False)
  strategy = tf.distribute.get_strategy()
  batch_images, labels = next(iter(distributed_dataset(
      config, get_source('digits', image_size=SIZE), strategy, is_training=False)))
  logits = tf.saved_model.load(directory)(batch_images, trainable=False)['logits_sup']
  labels = tf.argmax(labels, -1)
  top_1 = float(np.mean(tf.math.in_top_k(labels, logits, 1).numpy()))
  top_5 = float(np.mean(tf.math.in_top_k(labels, logits, 5).numpy()))
  result = json.loads((model_dir / 'eval' / 'result.json').read_text())
  assert result['eval/label_top_1_accuracy'] == pytest.approx(top_1, abs=1e-6)
  assert result['eval/label_top_5_accuracy'] == pytest.approx(top_5, abs=1e-6)
  assert result['global_step'] == 0.  # a SavedModel outside saved_model/<step>: step unknown


def test_distillation_teacher_from_released_style_saved_model(tmp_path):
  """An official-format SavedModel (empty trainable_variables_list) as the teacher: its logits
  are the SavedModel's own, and the command distils from it."""
  _, directory = official_saved_model('r18', False)
  config = Config(dataset='digits', image_size=SIZE, use_tpu=False, train_mode='distill',
                  teacher_checkpoint=directory)
  teacher = load_teacher(config)
  x = images(SIZE)
  expected = tf.saved_model.load(directory)(x, trainable=False)['logits_sup']
  np.testing.assert_allclose(teacher.logits(x).numpy(), expected.numpy(), rtol=0,
                             atol=1e-6 * max(1., float(np.max(np.abs(expected)))))
  code, _, err = run_main(TINY + ['--mode=train', '--train_mode=distill', '--train_steps=1',
                                  '--resnet_depth=18', f'--teacher_checkpoint={directory}',
                                  '--export_saved_model=false',
                                  f'--model_dir={tmp_path / "student"}'])
  assert code == 0, err
  assert (tmp_path / 'student' / 'ckpt-1.index').exists()


# --- the conversion tools --------------------------------------------------------------------

def torch_endpoints(state_dict, architecture, x):
  torch_model = SimCLRTorch(**architecture)
  torch_model.load_state_dict(state_dict)  # strict
  with torch.no_grad():
    return torch_model(torch.from_numpy(x.numpy()).permute(0, 3, 1, 2))


def read_output(path):
  return torch.load(path, weights_only=True)


def printed_architecture(stdout):
  line = next(l for l in stdout.splitlines() if l.startswith('architecture: '))
  return ast.literal_eval(line[len('architecture: '):])


@pytest.mark.parametrize('filled', [True, False], ids=['filled', 'empty'])
def test_pytorch_conversion_reads_official_saved_model(filled, tmp_path, capsys):
  arch = 'r18'
  _, directory = official_saved_model(arch, filled)
  output = str(tmp_path / 'weights.pth')
  code, out, err = run_cli(convert_to_pytorch, capsys, f'--checkpoint={directory}',
                           f'--output={output}')
  assert code == 0, err
  architecture = printed_architecture(out)
  x = images(SIZE if arch == 'r18' else R50_SIZE)
  expected = tf.saved_model.load(directory)(x, trainable=False)
  actual = torch_endpoints(read_output(output), architecture, x)
  for name in ('final_avg_pool', 'logits_sup', 'proj_head_output'):
    value = expected[name].numpy()
    np.testing.assert_allclose(actual[name].numpy(), value, rtol=0,
                               atol=1e-4 * max(1., float(np.max(np.abs(value)))), err_msg=name)


def test_export_tool_reexports_official_saved_model(tmp_path, capsys):
  _, directory = official_saved_model('r18', False)
  export_dir = str(tmp_path / 'export')
  code, _, err = run_cli(export_cli, capsys, f'--checkpoint={directory}',
                         f'--export_dir={export_dir}')
  assert code == 0, err
  x = images(SIZE)
  expected = tf.saved_model.load(directory)(x, trainable=False)['logits_sup'].numpy()
  ours = tf.saved_model.load(export_dir)
  np.testing.assert_allclose(ours(x, trainable=False)['logits_sup'], expected, rtol=0,
                             atol=1e-6 * max(1., float(np.max(np.abs(expected)))))
  assert len(ours.trainable_variables_list) > 60  # this project's exports keep the list


# --- what is not a SimCLR TF2 model -------------------------------------------------------------

def _tf1_checkpoint(directory):
  """A TF1 Saver checkpoint: `model.ckpt-7.{index,data,meta}` with graph-named variables."""
  graph = tf.Graph()
  with graph.as_default():
    tf.compat.v1.get_variable('base_model/conv2d/kernel', [3, 3, 3, 64])
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      return saver.save(session, os.path.join(directory, 'model.ckpt'), global_step=7)


def _hub_module(directory):
  """The files of a TF1 Hub module (content does not matter: the marker file decides)."""
  os.makedirs(directory)
  for name in ('saved_model.pb', 'tfhub_module.pb'):
    with open(os.path.join(directory, name), 'wb') as f:
      f.write(b'\x08\x03')


def _tf1_saved_model(directory):
  """A TF1 SavedModel with the two MetaGraphs of a Hub v1 export (tags [] and ['train']) but no
  tfhub_module.pb."""
  graph = tf.Graph()
  with graph.as_default():
    tf.compat.v1.get_variable('base_model/conv2d/kernel', [3, 3, 3, 64])
    builder = tf.compat.v1.saved_model.Builder(directory)
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      builder.add_meta_graph_and_variables(session, [])
      builder.add_meta_graph(['train'])
    builder.save()


def _foreign_saved_model(directory):
  module = tf.Module()
  module.weights = tf.Variable([1., 2.])
  tf.saved_model.save(module, directory)


@pytest.mark.parametrize('kind', ['tf1_checkpoint', 'tf1_checkpoint_dir', 'hub',
                                  'tf1_saved_model', 'foreign'])
def test_unsupported_sources_get_one_line_errors(kind, tmp_path, capsys):
  source = str(tmp_path / 'source')
  expected = {'tf1_checkpoint': 'is a TF1 checkpoint', 'tf1_checkpoint_dir': 'is a TF1 checkpoint',
              'hub': 'is a TF1 Hub module', 'tf1_saved_model': 'is a TF1 SavedModel',
              'foreign': 'not of a SimCLR model'}[kind]
  if kind.startswith('tf1_checkpoint'):
    os.makedirs(source)
    prefix = _tf1_checkpoint(source)
    if kind == 'tf1_checkpoint':
      source = prefix
  elif kind == 'hub':
    _hub_module(source)
  elif kind == 'tf1_saved_model':
    _tf1_saved_model(source)
  else:
    _foreign_saved_model(source)
  with pytest.raises(CheckpointError, match=expected) as info:
    load_model(source)
  assert '\n' not in str(info.value)
  if kind != 'foreign':
    assert 'gs://simclr-checkpoints-tf2' in str(info.value)
  # The same line from the command lines, and nothing written.
  output = tmp_path / 'out'
  code, _, err = run_cli(convert_to_pytorch, capsys, f'--checkpoint={source}',
                         f'--output={output / "w.pth"}')
  assert code == 1 and err.count('\n') == 1 and expected in err
  code, _, err = run_main(TINY + ['--mode=train', '--train_mode=finetune', '--train_steps=2',
                                  f'--checkpoint={source}', f'--model_dir={output}'])
  assert code == 1 and expected in err
  assert not output.exists()


# --- ft_proj_selector: from the run's config.json, or said to be unknown -------------------------

def _assert_converted_logits(capsys, tmp_path, source_flag, x, expected, scale):
  """simclr-convert-to-pytorch of a source fine-tuned with ft_proj_selector=1 finds the selector
  and its PyTorch module reproduces the expected logits_sup."""
  output = str(tmp_path / 'weights.pth')
  code, out, err = run_cli(convert_to_pytorch, capsys, source_flag, f'--output={output}')
  assert code == 0, err
  architecture = printed_architecture(out)
  assert architecture['ft_proj_selector'] == 1
  converted = torch_endpoints(read_output(output), architecture, x)['logits_sup'].numpy()
  np.testing.assert_allclose(converted, expected, rtol=0, atol=1e-4 * scale)


@pytest.fixture(scope='session')
def selector_run(tmp_path_factory):
  """A run fine-tuned from the first projection layer (the SimCLRv2 1%/10% setting): its head
  has the encoder's width, like a head on the encoder itself."""
  model_dir = str(tmp_path_factory.mktemp('selector') / 'ft1')
  code, _, err = run_main(TINY + ['--mode=train', '--train_mode=finetune', '--resnet_depth=18',
                                  '--ft_proj_selector=1', '--train_steps=2',
                                  '--export_saved_model=false', f'--model_dir={model_dir}'])
  assert code == 0, err
  return model_dir


def _logits(model, x):
  endpoints = tf.function(lambda x: model.call_with_endpoints(x, training=False))(x)
  return endpoints['logits_sup'].numpy()


def _without_run_config(model_dir, directory):
  """The run's last checkpoint copied alone (no config.json): only the shapes are left."""
  os.makedirs(directory)
  for name in os.listdir(model_dir):
    if name.startswith('ckpt-2.'):
      shutil.copy(os.path.join(model_dir, name), directory)
  return os.path.join(directory, 'ckpt-2')


def test_export_and_conversion_keep_ft_proj_selector(selector_run, tmp_path, capsys, caplog):
  x = images(SIZE)
  run_model = load_model(selector_run)  # the run's config.json: ft_proj_selector=1
  assert run_model.config.ft_proj_selector == 1
  expected = _logits(run_model.model, x)
  bare = _without_run_config(selector_run, str(tmp_path / 'bare'))
  guessed = load_model(bare)  # shapes fit 0, 1 and 2: 0 is used, and a warning says so
  assert guessed.config.ft_proj_selector == 0
  assert 'ft_proj_selector cannot be told from the shapes (0, 1, 2 fit)' in caplog.text
  wrong = _logits(guessed.model, x)
  assert np.max(np.abs(wrong - expected)) > 1e-3  # the selector matters for these weights
  scale = max(1., float(np.max(np.abs(expected))))
  tolerance = 1e-6 * scale

  # Both tools read the run's config.json beside the checkpoint, given the folder (the export
  # tool here) or a checkpoint prefix in it (the converter): one shared reader, once each.
  export_dir = str(tmp_path / 'export')
  code, _, err = run_cli(export_cli, capsys, f'--checkpoint={selector_run}',
                         f'--export_dir={export_dir}')
  assert code == 0, err
  exported = tf.saved_model.load(export_dir)(x, trainable=False)['logits_sup'].numpy()
  np.testing.assert_allclose(exported, expected, rtol=0, atol=tolerance)
  prefix = os.path.join(selector_run, 'ckpt-2')
  _assert_converted_logits(capsys, tmp_path, f'--checkpoint={prefix}', x, expected, scale)

  # Without config.json the flag decides; without the flag the tools say they cannot tell.
  caplog.clear()
  code, out, err = run_cli(convert_to_pytorch, capsys, f'--checkpoint={bare}',
                           f'--output={tmp_path / "guess.pth"}')
  assert code == 0, err
  assert printed_architecture(out)['ft_proj_selector'] == 0
  assert 'ft_proj_selector cannot be told from the shapes' in caplog.text
  code, out, err = run_cli(convert_to_pytorch, capsys, f'--checkpoint={bare}',
                           '--ft_proj_selector=1',
                           f'--output={tmp_path / "given.pth"}')
  assert code == 0, err
  converted = torch_endpoints(read_output(str(tmp_path / 'given.pth')), printed_architecture(out),
                              x)['logits_sup'].numpy()
  np.testing.assert_allclose(converted, expected, rtol=0, atol=1e-4 * scale)
  code, _, err = run_cli(export_cli, capsys, f'--checkpoint={bare}', '--ft_proj_selector=1',
                         '--train_mode=finetune', f'--export_dir={tmp_path / "given_export"}')
  assert code == 0, err
  exported = tf.saved_model.load(str(tmp_path / 'given_export'))(x, trainable=False)
  np.testing.assert_allclose(exported['logits_sup'].numpy(), expected, rtol=0, atol=tolerance)


def test_saved_model_decides_ft_proj_selector_by_its_outputs(tmp_path, capsys, caplog):
  """A released-style fine-tuned SavedModel (head on the first projection layer): the shapes fit
  0, 1 and 2, its own logits_sup fit only 1. In the released form (an empty trainable list);
  reading the filled form is the load_model and conversion tests' above."""
  _, directory = official_saved_model('r18', False, ft_proj_selector=1)
  x = images(SIZE)
  expected = tf.saved_model.load(directory)(x, trainable=False)['logits_sup'].numpy()
  scale = max(1., float(np.max(np.abs(expected))))
  loaded = load_model(directory)
  assert loaded.config.ft_proj_selector == 1
  np.testing.assert_allclose(_logits(loaded.model, x), expected, rtol=0, atol=1e-6 * scale)
  _assert_converted_logits(capsys, tmp_path, f'--saved_model={directory}', x, expected, scale)
  assert 'cannot be told' not in caplog.text
