"""Dataset sources and the input pipeline."""

import logging

import numpy as np
import pytest
import tensorflow as tf

from image_folders import RGBA, save_image
from simclr_tf2 import data
from simclr_tf2.data import distributed_dataset
from simclr_tf2.config import Config

CONTEXT = tf.distribute.InputContext()  # one pipeline, one replica


def _first_batch(source, batch, is_training, **kwargs):
  settings = dict(split='train', train_mode='pretrain', image_size=8, color_jitter_strength=1.0,
                  cache_dataset=False, seed=None)
  settings.update(kwargs)
  input_fn = data.build_input_fn(source, batch, is_training, **settings)
  return [t.numpy() for t in next(iter(input_fn(CONTEXT)))]


@pytest.fixture(scope='module')
def digits():
  return data.get_source('digits', image_size=8)


# --- digits -----------------------------------------------------------------------------------

def _split_arrays(source, split):
  images, labels = zip(*source.as_dataset(split, shuffle_files=False).as_numpy_iterator())
  return np.stack(images), np.array(labels)


def test_digits_split_sizes_classes_and_disjointness(digits):
  assert digits.num_classes == 10
  assert digits.num_examples('train') == 1437 and digits.num_examples('test') == 360
  assert digits.num_examples('validation') == 360
  train_images, train_labels = _split_arrays(digits, 'train')
  test_images, test_labels = _split_arrays(digits, 'test')
  assert train_images.shape == (1437, 8, 8, 3) and train_images.dtype == np.uint8
  assert train_labels.dtype == np.int64
  # The 1797 digits are all distinct, so shared bytes would mean a shared example.
  train_set = {image.tobytes() for image in train_images}
  assert len(train_set) == 1437 and not train_set & {image.tobytes() for image in test_images}
  assert set(np.bincount(test_labels)) <= {35, 36, 37}  # stratified: ~20 % of each ~180
  np.testing.assert_array_equal(_split_arrays(digits, 'validation')[1], test_labels)


def test_digits_images_are_real_gray_and_upscaled():
  images, _ = _split_arrays(data.get_source('digits', image_size=16), 'test')
  assert images.shape[1:] == (16, 16, 3)
  assert (images[..., 0] == images[..., 2]).all()  # gray tiled to RGB
  assert images.max() == 255 and images.min() == 0
  assert all(image.std() > 20 for image in images[:50])  # strokes, not constant images
  assert len({image.tobytes() for image in images}) == 360


def test_digits_unknown_split_lists_available(digits):
  with pytest.raises(ValueError, match='unknown split .*test, train, validation'):
    digits.num_examples('val')


def test_digits_input_pipelines_read_disjoint_shards(digits):
  shards = [{image.tobytes() for image, _ in digits.as_dataset(
      'train', False, tf.distribute.InputContext(2, pipeline, 2)).as_numpy_iterator()}
            for pipeline in (0, 1)]
  assert (len(shards[0]), len(shards[1])) == (719, 718) and not shards[0] & shards[1]


# --- image folders ----------------------------------------------------------------------------

def test_image_folder_reads_formats_and_skips_corrupt_files(folder, caplog):
  source = data.get_source('image_folder', str(folder))
  assert source.class_names == ['bird', 'cat', 'dog'] and source.num_classes == 3
  assert source.num_examples('train') == 6 and source.num_examples('test') == 2  # files listed
  with caplog.at_level(logging.WARNING, logger='simclr_tf2.data'):
    examples = list(source.as_dataset('train', shuffle_files=False).as_numpy_iterator())
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING and r.name.startswith('simclr_tf2.data')]
  assert warnings == [f'image_folder: skipped 2 unreadable image(s) of 6 in {folder}/train']
  shapes_labels = [(image.shape, image.dtype, label) for image, label in examples]
  assert shapes_labels == [((20, 30, 3), np.uint8, 1), ((17, 9, 3), np.uint8, 1),
                           ((5, 7, 3), np.uint8, 2), ((11, 13, 3), np.uint8, 2)]
  np.testing.assert_array_equal(examples[2][0], np.broadcast_to((10, 200, 30), (5, 7, 3)))
  gray = examples[1][0]
  assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()


def test_image_folder_lists_without_decoding(folder):
  """Construction reads directories only: a file that appears later is not seen, one that
  becomes unreadable later is skipped when read."""
  source = data.get_source('image_folder', str(folder))
  save_image(folder / 'train/cat/late.png', RGBA, 'PNG', 'RGBA')
  (folder / 'train/cat/a.jpg').write_bytes(b'broken after listing')
  assert source.num_examples('train') == 6
  labels = [label for _, label in source.as_dataset('train', False).as_numpy_iterator()]
  assert labels == [1, 2, 2]


def test_image_folder_corrupt_file_is_an_error_when_not_skipping(folder):
  source = data.get_source('image_folder', str(folder), skip_corrupt_images=False)
  assert source.num_examples('train') == 6
  with pytest.raises(data.CorruptImageError) as info, data.corrupt_image_errors():
    list(source.as_dataset('train', shuffle_files=False))
  assert str(info.value) == (f'image_folder: cannot decode image {folder}/train/dog/bad.jpg '
                             '(skip_corrupt_images=false)')
  # Also when the error is raised inside a distributed training step.
  strategy = tf.distribute.get_strategy()
  dataset = data.build_distributed_dataset(
      source, 4, True, strategy, split='train', train_mode='finetune', image_size=8,
      color_jitter_strength=0., cache_dataset=False, seed=0)
  iterator = iter(dataset)

  @tf.function
  def step():
    return strategy.run(lambda images, labels: tf.reduce_sum(images), args=next(iterator))

  with pytest.raises(data.CorruptImageError, match=r'^image_folder: cannot decode image .*\.jpg '
                     r'\(skip_corrupt_images=false\)$'), data.corrupt_image_errors():
    for _ in range(3):
      step()


def test_image_folder_unlabeled(folder):
  (folder / 'train/flat').mkdir()
  save_image(folder / 'train/flat/x.png', RGBA, 'PNG', 'RGBA')
  save_image(folder / 'train/flat/y.jpg', np.zeros((3, 4, 3), np.uint8), 'JPEG')
  source = data.get_source('image_folder_unlabeled', str(folder / 'train'))
  assert source.num_classes == 1
  labels = [label for _, label in source.as_dataset('flat', False).as_numpy_iterator()]
  assert labels == [0, 0] and source.num_examples('flat') == 2


def test_image_folder_missing_or_empty_is_an_error_at_construction(tmp_path):
  with pytest.raises(ValueError, match='is not a directory'):
    data.get_source('image_folder', str(tmp_path / 'missing'))
  with pytest.raises(ValueError, match='is not a directory'):
    data.get_source('image_folder', None)
  with pytest.raises(ValueError, match=f'^image_folder: no split folders in {tmp_path};'):
    data.get_source('image_folder', str(tmp_path))
  (tmp_path / 'train').mkdir()
  with pytest.raises(ValueError, match=f'^image_folder: no class folders in {tmp_path}/train;'):
    data.get_source('image_folder', str(tmp_path))
  with pytest.raises(ValueError, match=f'^image_folder_unlabeled: no images .* in {tmp_path}/train$'):
    data.get_source('image_folder_unlabeled', str(tmp_path))
  (tmp_path / 'train/cat').mkdir()
  (tmp_path / 'train/dog').mkdir()
  save_image(tmp_path / 'train/dog/x.png', RGBA, 'PNG', 'RGBA')
  (tmp_path / 'train/cat/notes.txt').write_text('not an image')
  with pytest.raises(ValueError, match=f'^image_folder: no images .* in {tmp_path}/train/cat$'):
    data.get_source('image_folder', str(tmp_path))
  (tmp_path / 'train/cat/.hidden.png').write_bytes(b'hidden files are not images')
  (tmp_path / 'train/cat/broken.png').write_bytes(b'\x89PNG junk')
  source = data.get_source('image_folder', str(tmp_path))
  with pytest.raises(ValueError, match="unknown split 'validation'; available splits: train"):
    source.num_examples('validation')
  (tmp_path / 'train/dog/x.png').write_bytes(b'broken too')
  with pytest.raises(data.CorruptImageError,
                     match=f'^image_folder: none of the images in {tmp_path}/train can be read$'):
    with data.corrupt_image_errors():
      list(data.get_source('image_folder', str(tmp_path)).as_dataset('train', True))


# --- TFDS (offline) ---------------------------------------------------------------------------

def test_tfds_unprepared_or_unknown_dataset_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="'mnist' is not prepared .*never downloads"):
    data.get_source('mnist', str(tmp_path))
  assert not (tmp_path / 'downloads').exists()
  with pytest.raises(ValueError, match="unknown dataset 'no_such_dataset_xyz'"):
    data.get_source('no_such_dataset_xyz', str(tmp_path))


def test_tfds_prepared_grayscale_dataset(tmp_path):
  import tensorflow_datasets as tfds

  class TinyGrayTestSet(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, supervised_keys=('image', 'label'),
                                   features=tfds.features.FeaturesDict({
                                       'image': tfds.features.Image(shape=(6, 6, 1)),
                                       'label': tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples(5), 'test': self._generate_examples(3)}

    def _generate_examples(self, count):
      for i in range(count):
        yield i, {'image': np.full((6, 6, 1), 40 * i, np.uint8), 'label': i % 3}

  TinyGrayTestSet(data_dir=str(tmp_path)).download_and_prepare()  # generated, nothing fetched
  source = data.get_source('tiny_gray_test_set', str(tmp_path))
  assert source.num_classes == 3 and source.num_examples('train') == 5
  assert source.num_examples('train[:2]') == 2
  examples = sorted((label, image[0, 0].tolist(), image.shape) for image, label
                    in source.as_dataset('test', False).as_numpy_iterator())
  assert examples == [(0, [0, 0, 0], (6, 6, 3)), (1, [40] * 3, (6, 6, 3)),
                      (2, [80] * 3, (6, 6, 3))]
  with pytest.raises(ValueError, match="unknown split 'validation'; available splits: test, train"):
    source.num_examples('validation')


# --- pipeline ---------------------------------------------------------------------------------

def test_pretrain_training_gives_two_different_views(digits):
  images, labels = _first_batch(digits, 6, True, seed=0)
  assert images.shape == (6, 8, 8, 6) and images.dtype == np.float32
  assert 0. <= images.min() and images.max() <= 1.
  assert np.abs(images[..., :3] - images[..., 3:]).max(axis=(1, 2, 3)).min() > 0.05
  assert labels.shape == (6, 10) and labels.dtype == np.float32
  np.testing.assert_array_equal(labels.sum(axis=1), 1.)


COLOUR = np.array([51, 128, 204], np.uint8)


@pytest.fixture
def colour_folder(tmp_path):
  """Two constant-colour training images: only colour augmentation can change their colour."""
  for name in ('x.png', 'y.png'):
    save_image(tmp_path / 'train/only' / name, np.tile(COLOUR, (12, 10, 1)), 'PNG')
  return data.get_source('image_folder', str(tmp_path))


def test_finetune_training_is_one_view_without_colour(colour_folder):
  images, _ = _first_batch(colour_folder, 8, True, train_mode='finetune', seed=0)
  assert images.shape == (8, 8, 8, 3)
  np.testing.assert_allclose(images, np.broadcast_to(COLOUR / 255., images.shape), atol=1e-5)


def test_pretrain_training_distorts_colour(colour_folder):
  images, _ = _first_batch(colour_folder, 8, True, train_mode='pretrain', seed=0)
  views = np.concatenate([images[..., :3], images[..., 3:]])  # 16 views
  changed = np.abs(views - COLOUR / 255.).max(axis=(1, 2, 3)) > 0.02
  assert changed.sum() >= 8  # each view keeps its colour with p = 0.2 * 0.8 only


def test_seeded_pipeline_is_reproducible(digits):
  first = _first_batch(digits, 4, True, seed=5)
  again = _first_batch(digits, 4, True, seed=5)
  other = _first_batch(digits, 4, True, seed=6)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(first[0], other[0])


def test_seeded_image_folder_pipeline_is_reproducible(folder):
  source = data.get_source('image_folder', str(folder))  # parallel reads, one skipped file
  first = _first_batch(source, 4, True, seed=5, train_mode='finetune')
  again = _first_batch(source, 4, True, seed=5, train_mode='finetune')
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)


def test_eval_reads_once_keeps_partial_batch_and_matches_labels(digits):
  input_fn = data.build_input_fn(digits, 100, False, split='validation', train_mode='pretrain',
                                 image_size=8, color_jitter_strength=1.0, cache_dataset=True)
  batches = [(x.numpy(), y.numpy()) for x, y in input_fn(CONTEXT)]
  assert [x.shape for x, _ in batches] == [(100, 8, 8, 3)] * 3 + [(60, 8, 8, 3)]
  _, expected_labels = _split_arrays(digits, 'test')  # eval is unshuffled and unaugmented
  labels = np.concatenate([y for _, y in batches])
  np.testing.assert_array_equal(labels.argmax(axis=1), expected_labels)
  images = np.concatenate([x for x, _ in batches])
  expected_images = _split_arrays(digits, 'test')[0] / 255.
  np.testing.assert_allclose(images, expected_images, atol=1e-6)  # exact 8x8: no resize


def test_training_repeats_and_drops_remainder(folder):
  source = data.get_source('image_folder', str(folder))  # 4 readable training images of 6
  input_fn = data.build_input_fn(source, 3, True, split='train', train_mode='finetune',
                                 image_size=8, color_jitter_strength=0., cache_dataset=True)
  shapes = [x.shape for x, _ in input_fn(CONTEXT).take(5)]
  assert shapes == [(3, 8, 8, 3)] * 5


def test_distributed_dataset_gives_per_replica_batches(digits, two_replica_strategy):
  dataset = data.build_distributed_dataset(
      digits, 8, True, two_replica_strategy, split='train', train_mode='pretrain', image_size=8,
      color_jitter_strength=0.5, cache_dataset=False, seed=1)
  images, labels = next(iter(dataset))
  per_replica = two_replica_strategy.experimental_local_results(images)
  assert [x.shape for x in per_replica] == [(4, 8, 8, 6)] * 2
  assert [y.shape for y in two_replica_strategy.experimental_local_results(labels)] == [(4, 10)] * 2


def test_slack_is_set_for_tpus_only(digits):
  """tf.data's slack (final prefetch) eases TPU hosts; under MirroredStrategy TensorFlow's
  multi-device iterator hides the final prefetch and tf.data logs a warning at every start."""
  settings = dict(split='train', train_mode='pretrain', image_size=8, color_jitter_strength=1.0,
                  cache_dataset=False)
  for slack in (False, True):
    dataset = data.build_input_fn(digits, 8, True, slack=slack, **settings)(CONTEXT)
    assert dataset.options().experimental_slack is slack
  assert data.build_input_fn(digits, 8, True, **settings)(CONTEXT).options().experimental_slack \
      is False


def test_distributed_batch_must_divide_replicas(digits, two_replica_strategy):
  with pytest.raises(ValueError, match='global batch size 7 is not divisible by the 2 replicas'):
    data.build_distributed_dataset(
        digits, 7, True, two_replica_strategy, split='train', train_mode='pretrain',
        image_size=8, color_jitter_strength=1.0, cache_dataset=False)


def test_pipeline_validates_arguments(digits):
  with pytest.raises(ValueError, match='color_jitter_strength=2.0'):
    data.build_input_fn(digits, 8, True, split='train', train_mode='pretrain', image_size=8,
                        color_jitter_strength=2.0, cache_dataset=False)
  with pytest.raises(ValueError, match="train_mode='linear'"):
    data.build_input_fn(digits, 8, True, split='train', train_mode='linear', image_size=8,
                        color_jitter_strength=1.0, cache_dataset=False)


# --- exact resume of a seeded stream ------------------------------------------------------------

def _batches(source, global_batch, context, count, train_mode, cache_dataset=False, **kwargs):
  input_fn = data.build_input_fn(source, global_batch, True, split='train', train_mode=train_mode,
                                 image_size=8, color_jitter_strength=1.0,
                                 cache_dataset=cache_dataset, seed=7, **kwargs)
  return [(x.numpy(), y.numpy()) for x, y in input_fn(context).take(count)]


@pytest.mark.parametrize('context,batches_per_step,cache_dataset,train_mode,start_step', [
    # 1437 training digits, 32 per step: step 50 is inside epoch 1 (one pipeline)
    (CONTEXT, 1, False, 'finetune', 50),  # one replica
    (CONTEXT, 1, True, 'pretrain', 5),  # two augmented views per example, within epoch 0
    (tf.distribute.InputContext(1, 0, 2), 2, False, 'finetune', 50),  # one pipeline, 2 replicas
    # second of two pipelines (719 examples each), one replica each: inside epoch 2
    (tf.distribute.InputContext(2, 1, 2), 1, True, 'finetune', 50),
])
def test_seeded_stream_resumed_at_a_step_continues_the_uninterrupted_one_and_ends_at_train_steps(
    digits, context, batches_per_step, cache_dataset, train_mode, start_step):
  global_batch, steps = 32, 2
  count = steps * batches_per_step
  uninterrupted = _batches(digits, global_batch, context, (start_step + steps) * batches_per_step,
                           train_mode, cache_dataset)
  resumed = _batches(digits, global_batch, context, count, train_mode, cache_dataset,
                     start_step=start_step)
  assert len(resumed) == count
  for (x, y), (x_ref, y_ref) in zip(resumed, uninterrupted[-count:]):
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(x, x_ref)
  assert not np.array_equal(resumed[0][0], uninterrupted[0][0])
  # Stopping at train_steps: the stream ends with the last step's batches, the same ones.
  finite = _batches(digits, global_batch, context, count + 3, train_mode, cache_dataset,
                    start_step=start_step, train_steps=start_step + steps)
  assert len(finite) == count
  for (x, y), (x_ref, y_ref) in zip(finite, resumed):
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(x, x_ref)


def test_seeded_epochs_are_permutations_in_new_orders(digits):
  """Every example once per epoch, each epoch in another order (so the stream is not periodic)."""
  epoch = digits.num_examples('train')  # 1437 = 3 * 479
  input_fn = data.build_input_fn(digits, 479, True, split='train', train_mode='finetune',
                                 image_size=8, color_jitter_strength=0., cache_dataset=False,
                                 seed=3)
  label_batches = [y.numpy().argmax(1) for _, y in input_fn(CONTEXT).take(6)]
  first, second = np.concatenate(label_batches[:3]), np.concatenate(label_batches[3:])
  counts = np.bincount(_split_arrays(digits, 'train')[1], minlength=10)
  assert len(first) == epoch
  np.testing.assert_array_equal(np.bincount(first, minlength=10), counts)
  np.testing.assert_array_equal(np.bincount(second, minlength=10), counts)
  assert not np.array_equal(first, second)


def test_seeded_stream_works_under_a_global_seed_of_zero(digits):
  """keras.utils.set_random_seed(0) (what run() does for --seed=0) must not break the stream."""
  tf.random.set_seed(0)
  try:
    first = _batches(digits, 16, CONTEXT, 1, 'pretrain', start_step=100)
    again = _batches(digits, 16, CONTEXT, 1, 'pretrain', start_step=100)
  finally:
    tf.random.set_seed(None)
  np.testing.assert_array_equal(first[0][0], again[0][0])


def test_config_augmentation_options_reach_the_training_pipeline(digits):
  # crop_min_area=1 takes the whole image and no flip keeps it as it is: with colour jitter off
  # (fine-tuning), every training view is then one of the train images, exactly, with its label.
  config = Config(dataset='digits', train_mode='finetune', image_size=8, train_batch_size=16,
                  seed=3, crop_min_area=1.0, horizontal_flip=False)
  strategy = tf.distribute.get_strategy()
  views, view_labels = next(iter(distributed_dataset(config, digits, strategy, True)))
  images, labels = _split_arrays(digits, 'train')
  order = [np.flatnonzero(np.isclose(images / 255., view, atol=1e-5).all(axis=(1, 2, 3)))[0]
           for view in views.numpy()]
  np.testing.assert_array_equal(labels[order], view_labels.numpy().argmax(1))
