"""load_model and the embedding tool: every source gives the model's own endpoint outputs;
metadata, projector files and sprite; unlabeled image folders end to end; one-line errors."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from PIL import Image
from tensorboard.plugins.projector import projector_config_pb2

from golden_data import golden_model_tree, plausible_value, read_keys
from simclr_tf2 import embed
from simclr_tf2.inference import embeddings as embeddings_lib
from simclr_tf2.network.checkpoint import CheckpointError, object_keys
from simclr_tf2.config import Config
from simclr_tf2.data import get_source
from simclr_tf2.inference.loading import load_model
from simclr_tf2.network.model import build_model
from export_cases import randomize_batch_norm

# One xdist worker runs this module, so its session-scoped runs are built once (module-scoped
# ones were built again when the worker's test order left the module and came back).
pytestmark = pytest.mark.xdist_group('test_embed')

SIZE = 16
COUNT = 20  # digits test images embedded per test (batches of 8: the last one is partial)
STEP = 7


@pytest.fixture(scope='session')
def trained(tmp_path_factory):
  """A small model with non-trivial batch norm, saved as a run's model_dir (config.json too)."""
  config = Config(resnet_depth=18, image_size=SIZE, proj_out_dim=8, dataset='digits',
                  lineareval_while_pretraining=True, use_tpu=False)
  model = build_model(10, config).create_variables()
  randomize_batch_norm(model)
  model_dir = str(tmp_path_factory.mktemp('run'))
  with open(os.path.join(model_dir, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump(config.to_dict(), f)
  prefix = tf.train.Checkpoint(model=model, global_step=tf.Variable(STEP, dtype=tf.int64)).save(
      os.path.join(model_dir, 'ckpt'))
  return model, config, model_dir, prefix


def digits_batch(size, count=COUNT):
  """The first `count` digits test images as the model sees them (<= 32 px: no crop) + labels."""
  images, labels = next(get_source('digits', image_size=size).as_dataset('test', False)
                        .batch(count).as_numpy_iterator())
  return images.astype(np.float32) / 255., labels


def assert_embeds_like(model, loaded, endpoint='final_avg_pool', strategy=None):
  images, labels = digits_batch(loaded.config.image_size)
  expected = model.call_with_endpoints(tf.constant(images))[endpoint].numpy()
  result = embeddings_lib.compute_embeddings(loaded, get_source('digits', image_size=loaded.config.image_size),
                                    'test', endpoint, batch_size=8, max_examples=COUNT,
                                    strategy=strategy)
  assert result.embeddings.dtype == np.float32 and result.embeddings.shape == expected.shape
  np.testing.assert_allclose(result.embeddings, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(result.labels, labels)
  assert result.ids == [f'digits:test[{i}]' for i in range(COUNT)]


def test_model_dir_source(trained):
  model, config, model_dir, prefix = trained
  loaded = load_model(model_dir)
  assert (loaded.path, loaded.global_step, loaded.config) == (prefix, STEP, config)
  assert_embeds_like(model, loaded)
  assert_embeds_like(model, loaded, 'proj_head_output')


def test_checkpoint_source_detects_architecture(trained, two_replica_strategy):
  model, _, _, prefix = trained
  # No config.json: depth, widths and heads come from the shapes; image_size is not in them.
  loaded = load_model(prefix, image_size=SIZE, strategy=two_replica_strategy)
  assert loaded.config.resnet_depth == 18 and loaded.config.proj_out_dim == 8
  assert loaded.model.has_supervised_head and loaded.global_step == STEP
  assert_embeds_like(model, loaded, strategy=two_replica_strategy)  # split over 2 replicas


def test_official_layout_checkpoint_source(golden_dir, tmp_path):
  del golden_dir  # golden_data reads it; the fixture fails clearly when it is missing
  tree, values = golden_model_tree(read_keys('r18_cifar_pretrain_lars'),
                                   np.random.default_rng(0), draw=plausible_value)
  prefix = tf.train.Checkpoint(model=tree).save(str(tmp_path / 'model.ckpt'))
  loaded = load_model(str(tmp_path))  # a directory, no flags at all
  assert loaded.config.image_size == 32 and loaded.global_step is None  # no step in the file
  assert loaded.path == prefix
  restored = {key[len('model/'):-len('/.ATTRIBUTES/VARIABLE_VALUE')]: v.numpy()
              for key, v in object_keys(model=loaded.model).items()}
  assert restored.keys() == values.keys()
  for path, value in values.items():
    np.testing.assert_array_equal(restored[path], value, err_msg=path)
  assert_embeds_like(loaded.model, loaded)


@pytest.mark.slow
def test_saved_model_source(trained, tmp_path):
  from simclr_tf2.network.export import export_saved_model  # pylint: disable=import-outside-toplevel
  model, config, _, _ = trained
  path = export_saved_model(model, str(tmp_path / 'saved_model' / '42'))
  loaded = load_model(path, image_size=SIZE)
  assert loaded.global_step == 42 and loaded.config.proj_out_dim == config.proj_out_dim
  assert_embeds_like(model, loaded)


def test_load_errors_are_one_line(trained, tmp_path):
  _, _, _, prefix = trained
  with pytest.raises(CheckpointError, match='does not match the model') as info:
    load_model(prefix, resnet_depth=34)  # a given flag wins over detection, then mismatches
  assert '\n' not in str(info.value)
  with pytest.raises(CheckpointError, match='no checkpoint found'):
    load_model(str(tmp_path))
  with pytest.raises(CheckpointError, match='no model source'):
    load_model('')


def test_sprite_thumbnail_size_respects_projector_limit():
  # ceil(sqrt(N)) thumbnails per row must fit in 8192 pixels; 64 px at most.
  assert embeddings_lib.sprite_thumbnail_size(100) == 64  # 10 per row
  assert embeddings_lib.sprite_thumbnail_size(20000) == 57  # 142 per row: 8192 // 142
  assert embeddings_lib.sprite_thumbnail_size(10 ** 6) == 8  # 1000 per row
  assert embeddings_lib.sprite_thumbnail_size(8192 ** 2 + 1) == 0  # cannot fit: no sprite
  sprite = embeddings_lib.sprite_image(np.zeros([5, 4, 4, 3], np.uint8))  # 3 columns, 2 rows
  assert sprite.shape == (8, 12, 3)
  assert np.all(sprite[4:, 8:] == 255) and np.all(sprite[4:, :8] == 0)  # 6th cell stays blank


def write_pngs(folder, count):
  folder.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for index in range(count):
    pixels = rng.integers(0, 256, (12 + index, 10, 3), dtype=np.uint8)  # various sizes
    Image.fromarray(pixels).save(folder / f'img{index}.png')


def test_unlabeled_image_folder_end_to_end(trained, tmp_path, capsys):
  _, _, _, prefix = trained
  write_pngs(tmp_path / 'data' / 'train', 6)
  out = tmp_path / 'out'
  code = embed.run(['embed', f'--source={prefix}', '--image_size=16',
                    '--dataset=image_folder_unlabeled', f'--data_dir={tmp_path / "data"}',
                    '--split=train', '--batch_size=4', '--plots=pca,map', f'--output_dir={out}'])
  assert code == 0, capsys.readouterr().err
  embeddings = np.load(out / 'embeddings.npy')
  assert embeddings.shape == (6, 512) and embeddings.dtype == np.float32
  rows = (out / 'metadata.tsv').read_text(encoding='utf-8').splitlines()
  assert rows[0] == 'index\tid'
  assert rows[1:] == [f'{i}\t{tmp_path / "data" / "train" / f"img{i}.png"}' for i in range(6)]
  config = text_format.Parse((out / 'projector_config.pbtxt').read_text(),
                             projector_config_pb2.ProjectorConfig())
  (entry,) = config.embeddings
  assert entry.metadata_path == 'metadata.tsv' and entry.sprite.image_path == 'sprite.png'
  thumbnail = embeddings_lib.sprite_thumbnail_size(6)
  assert list(entry.sprite.single_image_dim) == [thumbnail, thumbnail] == [64, 64]
  with Image.open(out / 'sprite.png') as sprite:
    assert sprite.size == (3 * 64, 2 * 64)  # 3 columns (ceil sqrt 6), 2 rows
  reader = tf.train.load_checkpoint(str(out))
  np.testing.assert_array_equal(reader.get_tensor(entry.tensor_name), embeddings)
  for name in ('pca.png', 'thumbnail_map.png'):
    with Image.open(out / name) as image:
      assert image.format == 'PNG'
  assert not (out / 'scores.json').exists()


def test_labeled_metadata_and_bad_flags(trained, tmp_path, capsys):
  _, _, model_dir, _ = trained
  out = tmp_path / 'out'
  code = embed.run(['embed', f'--source={model_dir}', '--max_examples=3', '--plots=',
                    '--noprojector', f'--output_dir={out}'])
  assert code == 0, capsys.readouterr().err
  rows = (out / 'metadata.tsv').read_text(encoding='utf-8').splitlines()
  _, labels = digits_batch(SIZE, 3)
  assert rows == ['index\tlabel\tclass\tid'] + [f'{i}\t{labels[i]}\t{labels[i]}\tdigits:test[{i}]'
                                                for i in range(3)]
  assert not (out / 'projector_config.pbtxt').exists()
  capsys.readouterr()
  for args, message in ((['--endpoint=nope'], "unknown endpoint 'nope'"),
                        (['--plots=tsne,pie'], 'unknown pie'),
                        (['--probe', '--dataset=image_folder_unlabeled',
                          f'--data_dir={tmp_path / "unlabeled"}'], 'needs labels')):
    if 'needs labels' in message:
      write_pngs(tmp_path / 'unlabeled' / 'test', 1)
    code = embed.run(['embed', f'--source={model_dir}', '--max_examples=2',
                      f'--output_dir={out}'] + args)
    err = capsys.readouterr().err
    assert code == 1 and message in err and err.count('\n') == 1, err
