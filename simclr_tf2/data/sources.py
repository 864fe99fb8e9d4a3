"""Dataset sources: decoded examples of one split, from TFDS, image folders or the embedded digits.

A *source* yields `(image uint8 [H, W, 3], label int64)` examples of one split:

  source.num_classes
  source.num_examples(split)
  source.as_dataset(split, shuffle_files, input_context=None, seed=None)
  source.class_names               label -> name
  source.example_ids(split)        one string per example, in unshuffled as_dataset order
  source.labels(split)             int64 labels in that order (label_subset.py)

`get_source` picks one of: a prepared TFDS dataset, `digits` (scikit-learn's embedded 8x8 digits,
fully offline), `image_folder` (data_dir/<split>/<class>/<image>) or `image_folder_unlabeled`
(data_dir/<split>/<image>). Nothing here downloads anything.
"""

import contextlib
import functools
import logging
import os
import re

import numpy as np
import tensorflow as tf

from simclr_tf2.errors import SimCLRError

logger = logging.getLogger(__name__)

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp')


def _fail_split(dataset, split, available):
  raise ValueError(f'{dataset}: unknown split {split!r}; available splits: '
                   f'{", ".join(sorted(available)) or "none"}')


def _shard(dataset, input_context):
  """Gives each input pipeline (host) a disjoint part of an in-memory or file-list dataset."""
  if input_context and input_context.num_input_pipelines > 1:
    return dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
  return dataset


def _to_rgb(image):
  """Makes a decoded image 3-channel: grayscale is tiled, an alpha channel dropped."""
  channels = image.shape[-1]
  if channels == 1:
    return tf.image.grayscale_to_rgb(image)
  if channels == 4:
    return image[..., :3]
  return image


# --- TFDS -------------------------------------------------------------------------------------

class TfdsSource:
  """A TFDS dataset already prepared in `data_dir` (read only; never downloaded)."""

  def __init__(self, name, data_dir=None):
    import tensorflow_datasets as tfds  # heavy import, only when a TFDS dataset is used
    self._tfds = tfds
    self.name = name
    try:
      self._builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
      raise ValueError(f'unknown dataset {name!r}: not a TFDS dataset name nor a prepared dataset '
                       f'in data_dir={data_dir!r}; built-in alternatives: digits, image_folder, '
                       'image_folder_unlabeled') from None
    if not self._builder.is_prepared():
      where = f'data_dir={data_dir!r}' if data_dir else 'the default TFDS data_dir'
      raise ValueError(
          f'TFDS dataset {name!r} is not prepared in {where}; prepare it on a machine with '
          f'internet (e.g. `tfds build {name} --data_dir=DIR`) and pass --data_dir=DIR (this '
          'program never downloads data)')
    info = self._builder.info
    if not info.supervised_keys:
      raise ValueError(f'TFDS dataset {name!r} has no (image, label) supervised keys')
    label_key = info.supervised_keys[1]
    self.num_classes = info.features[label_key].num_classes
    self.class_names = list(info.features[label_key].names)

  def _check_split(self, split):
    try:
      return self._builder.info.splits[split]
    except (KeyError, ValueError):
      _fail_split(self.name, split, self._builder.info.splits.keys())

  def num_examples(self, split):
    return self._check_split(split).num_examples

  def labels(self, split):
    """The split's labels in unshuffled as_dataset order, read without decoding the images."""
    self._check_split(split)
    label_key = self._builder.info.supervised_keys[1]
    dataset = self._builder.as_dataset(split=split, shuffle_files=False, decoders={
        self._builder.info.supervised_keys[0]: self._tfds.decode.SkipDecoding()})
    return np.array([int(x[label_key]) for x in dataset.as_numpy_iterator()], np.int64)

  def example_ids(self, split):
    """TFDS slicing strings (`name:split[i]`): unshuffled reads are in a fixed order."""
    return [f'{self.name}:{split}[{index}]' for index in range(self.num_examples(split))]

  def as_dataset(self, split, shuffle_files, input_context=None, seed=None):
    self._check_split(split)
    read_config = self._tfds.ReadConfig(
        interleave_cycle_length=32, interleave_block_length=1, input_context=input_context,
        shuffle_seed=seed)
    dataset = self._builder.as_dataset(split=split, shuffle_files=shuffle_files,
                                       as_supervised=True, read_config=read_config)
    return dataset.map(lambda image, label: (_to_rgb(image), tf.cast(label, tf.int64)))


# --- in-memory sources ------------------------------------------------------------------------

class DigitsSource:
  """scikit-learn's 1797 real 8x8 handwritten digits (10 classes), shipped inside the package.

  Fixed stratified split: `train` = 1437 images, `test` = 360 (`validation` is an alias of
  `test`, the reference's default eval split). Pixel values 0..16 become uint8 0..255, gray is
  tiled to RGB, and images are upscaled (bilinear) to `image_size` when given.
  """

  num_classes = 10
  class_names = [str(digit) for digit in range(10)]
  SPLIT_ALIASES = {'train': 'train', 'test': 'test', 'validation': 'test'}

  def __init__(self, image_size=None):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    images = np.round(digits.images * (255. / 16.)).astype(np.uint8)
    indices = np.arange(len(images))
    train, test = train_test_split(indices, test_size=DIGITS_TEST_FRACTION,
                                   stratify=digits.target, random_state=DIGITS_SPLIT_SEED)
    self._splits = {name: (images[np.sort(idx)], digits.target[np.sort(idx)].astype(np.int64))
                    for name, idx in (('train', train), ('test', test))}
    self.image_size = image_size

  def _split(self, split):
    if split not in self.SPLIT_ALIASES:
      _fail_split('digits', split, self.SPLIT_ALIASES)
    return self._splits[self.SPLIT_ALIASES[split]]

  def num_examples(self, split):
    return len(self._split(split)[1])

  def labels(self, split):
    return self._split(split)[1]

  def example_ids(self, split):
    return [f'digits:{split}[{index}]' for index in range(self.num_examples(split))]

  def as_dataset(self, split, shuffle_files, input_context=None, seed=None):
    images, labels = self._split(split)
    dataset = _shard(tf.data.Dataset.from_tensor_slices((images, labels)), input_context)
    if shuffle_files:  # the whole split is one small "file": shuffle examples instead
      dataset = dataset.shuffle(len(labels), seed=seed)
    return dataset.map(self._to_example)

  def _to_example(self, image, label):
    image = tf.image.grayscale_to_rgb(image[..., tf.newaxis])
    if self.image_size:
      image = tf.image.resize(image, [self.image_size, self.image_size], method='bilinear')
      image = tf.cast(tf.round(tf.clip_by_value(image, 0., 255.)), tf.uint8)
    return image, label


# --- image folders ----------------------------------------------------------------------------

def _entries(folder):
  """Sorted (name, is_dir, is_image) of a folder's visible entries: one directory read."""
  with os.scandir(folder) as entries:
    return sorted((entry.name, entry.is_dir(), entry.is_file() and
                   entry.name.lower().endswith(IMAGE_EXTENSIONS))
                  for entry in entries if not entry.name.startswith('.'))


def _subfolders(folder):
  return [name for name, is_dir, _ in _entries(folder) if is_dir]


def _image_paths(folder):
  return [os.path.join(folder, name) for name, _, is_image in _entries(folder) if is_image]


def _decode(contents):
  return tf.io.decode_image(contents, channels=3, expand_animations=False)


def _read_image(path, label):
  return _decode(tf.io.read_file(path)), label


def _read_image_or_fail(name, path, label):
  """A one-element dataset of the decoded image, or an assertion error naming the file. The
  error is caught per file (a dataset of one element), so the file is known."""
  def fail(path, label):
    message = tf.strings.join([f'{name}: cannot decode image ', path,
                               ' (skip_corrupt_images=false)'])
    with tf.control_dependencies([tf.debugging.Assert(False, [message])]):
      return tf.zeros([0, 0, 3], tf.uint8), tf.identity(label)

  one = tf.data.Dataset.from_tensors((path, label))
  return one.map(_read_image).ignore_errors().concatenate(one.map(fail)).take(1)


class CorruptImageError(SimCLRError, ValueError):
  """An image folder's file cannot be decoded (skip_corrupt_images=False), or none can."""


# The message of the pipeline's assertions (see ImageFolderSource.as_dataset), on one line.
_IMAGE_FOLDER_ASSERTION = re.compile(r'assertion failed: \[(image_folder(?:_unlabeled)?: .*?)\]$',
                                     re.MULTILINE)


@contextlib.contextmanager
def corrupt_image_errors():
  """Reports an image folder's unreadable image (skip_corrupt_images=False) or unreadable split,
  which TensorFlow raises wherever the dataset is read (e.g. inside a training step), as a
  one-line CorruptImageError. Also usable as a decorator."""
  try:
    yield
  except tf.errors.InvalidArgumentError as error:
    match = _IMAGE_FOLDER_ASSERTION.search(error.message)
    if not match:
      raise
    raise CorruptImageError(match.group(1)) from None


class ImageFolderSource:
  """Images on disk: data_dir/<split>/<class>/<image> (labeled) or data_dir/<split>/<image>.

  Construction only lists file names (one directory read per folder; nothing is decoded):
  an empty split folder or class folder is a ValueError naming it. Labeled: classes are the
  sorted union of class-folder names over all split folders, so train and eval splits share one
  label mapping. Unlabeled: every image has label 0 and num_classes is 1 (pretraining only).
  `num_examples` counts the listed image files.

  `as_dataset` reads and decodes in parallel. JPEG, PNG, GIF (first frame) and BMP of any size
  are read; grayscale and RGBA become RGB. A file that cannot be read or decoded is skipped, with
  one warning per pass over the split giving the count, or, when `skip_corrupt_images` is False,
  stops reading with an error naming it (see `corrupt_image_errors`; this mode checks each file
  on its own, which costs some throughput on tiny images).
  """

  def __init__(self, data_dir, labeled=True, skip_corrupt_images=True):
    self.name = 'image_folder' if labeled else 'image_folder_unlabeled'
    layout = f'data_dir/<split>/{"<class>/" if labeled else ""}<image files>'
    if not data_dir or not os.path.isdir(data_dir):
      raise ValueError(f'{self.name}: data_dir={data_dir!r} is not a directory; expected {layout}')
    self.data_dir = data_dir
    self.labeled = labeled
    self.skip_corrupt_images = skip_corrupt_images
    splits = _subfolders(data_dir)
    if not splits:
      raise ValueError(f'{self.name}: no split folders in {data_dir}; expected {layout}')
    listed = {split: self._list_split(os.path.join(data_dir, split)) for split in splits}
    if labeled:
      self.class_names = sorted({name for classes in listed.values() for name in classes})
    else:
      self.class_names = ['unlabeled']
    self.num_classes = len(self.class_names)
    self._examples = {}  # split -> (paths, labels)
    index = {name: label for label, name in enumerate(self.class_names)}
    for split, classes in listed.items():
      examples = [(path, index[name] if labeled else 0)
                  for name, paths in classes.items() for path in paths]
      paths, labels = zip(*examples)
      self._examples[split] = (list(paths), np.array(labels, np.int64))

  def _list_split(self, folder):
    """{class name: image paths} of a split folder ({'': paths} when unlabeled)."""
    extensions = ', '.join(IMAGE_EXTENSIONS)
    if not self.labeled:
      paths = _image_paths(folder)
      if not paths:
        raise ValueError(f'{self.name}: no images ({extensions}) in {folder}')
      return {'': paths}
    classes = {name: _image_paths(os.path.join(folder, name)) for name in _subfolders(folder)}
    if not classes:
      raise ValueError(f'{self.name}: no class folders in {folder}; expected {folder}/<class>/'
                       '<image files>')
    for name, paths in classes.items():
      if not paths:
        raise ValueError(f'{self.name}: no images ({extensions}) in {os.path.join(folder, name)}')
    return classes

  def _split(self, split):
    if split not in self._examples:
      _fail_split(f'{self.name} {self.data_dir}', split, self._examples)
    return self._examples[split]

  def num_examples(self, split):
    return len(self._split(split)[0])

  def example_ids(self, split):
    return list(self._split(split)[0])  # the image paths

  def labels(self, split):
    return self._split(split)[1]

  def as_dataset(self, split, shuffle_files, input_context=None, seed=None):
    paths, labels = self._split(split)
    dataset = _shard(tf.data.Dataset.from_tensor_slices((paths, labels)), input_context)
    expected = dataset.cardinality()  # files of this input pipeline
    if shuffle_files:  # one file per example: shuffling the file list is a full shuffle
      dataset = dataset.shuffle(len(labels), seed=seed)
    # Reads run in parallel; their order is deterministic unless the pipeline's options say not.
    if not self.skip_corrupt_images:
      return dataset.interleave(functools.partial(_read_image_or_fail, self.name),
                                num_parallel_calls=tf.data.AUTOTUNE)
    # Unreadable files are dropped; an end marker closes each pass, where the files it lacks are
    # counted (one warning per pass), and a pass that read nothing fails rather than leaving an
    # empty dataset to be repeated forever.
    dataset = dataset.map(_read_image, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    dataset = dataset.map(lambda image, label: (image, label, False))
    end = tf.data.Dataset.from_tensors((tf.zeros([0, 0, 3], tf.uint8), tf.constant(0, tf.int64),
                                        True))
    folder = os.path.join(self.data_dir, split)

    def warn(skipped, total):
      logger.warning('%s: skipped %d unreadable image(s) of %d in %s', self.name, int(skipped),
                     int(total), folder)
      return False

    def count(seen, element):
      image, label, at_end = element
      skipped = expected - seen
      assertion = tf.debugging.Assert(tf.logical_not(at_end & tf.equal(seen, 0)),
                                      [f'{self.name}: none of the images in {folder} can be read'])
      with tf.control_dependencies([assertion]):
        keep = tf.cond(at_end, lambda: tf.cond(skipped > 0, lambda: _scalar(tf.py_function(
            warn, [skipped, expected], tf.bool)), lambda: tf.constant(False)), lambda: tf.constant(True))
      return seen + 1, (image, label, keep)

    dataset = dataset.concatenate(end).scan(tf.constant(0, tf.int64), count)
    return dataset.filter(_is_kept).map(_without_flag)


def _scalar(tensor):
  return tf.ensure_shape(tensor, [])


def _is_kept(image, label, ok):  # pylint: disable=unused-argument
  return ok


def _without_flag(image, label, ok):  # pylint: disable=unused-argument
  return image, label


def get_source(dataset, data_dir=None, skip_corrupt_images=True, image_size=None):
  """The source named `dataset`: digits, image_folder, image_folder_unlabeled or a TFDS name.

  `image_size` is only used by `digits` (upscaling from 8x8; None keeps 8x8).
  """
  if dataset == 'digits':
    return DigitsSource(image_size)
  if dataset in ('image_folder', 'image_folder_unlabeled'):
    return ImageFolderSource(data_dir, labeled=dataset == 'image_folder',
                             skip_corrupt_images=skip_corrupt_images)
  return TfdsSource(dataset, data_dir)
