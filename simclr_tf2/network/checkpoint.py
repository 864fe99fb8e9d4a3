"""Checkpoint paths, key listing, and strict restores with one-line errors (K14, K15, K27).

Keys are paths through the object graph (docs/architecture-notes.md, "Checkpoint keys"): this
module computes the keys a model *would* have, compares them with a file before restoring, and
refuses partial restores.
Kn: defect numbers of the official code, listed in docs/differences.md.
"""

import collections
import contextlib
import logging
import os
import re
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from simclr_tf2.architecture import DETECTED_FLAGS, MODEL_PREFIX, SLOT_MARKER, VALUE_SUFFIX
from simclr_tf2.compat import is_keras_tracking_attribute
from simclr_tf2.errors import CheckpointError, TrainingError, one_line
from simclr_tf2.model_dir import numbered_checkpoints

SUPERVISED_HEAD_KEY = 'model/supervised_head/'
SAVED_MODEL_FILE = 'saved_model.pb'
HUB_MODULE_FILE = 'tfhub_module.pb'  # marks a TF1 Hub module
OBJECT_GRAPH_KEY = '_CHECKPOINTABLE_OBJECT_GRAPH'  # in every object-based (TF2) checkpoint
USE_TF2_RELEASE = ('use the TF2 SavedModel or checkpoint of the same model from '
                   'gs://simclr-checkpoints-tf2 instead (docs/checkpoints.md)')


# A truncated data file surfaces as IndexError ("Read less bytes than requested") from TF's reader.
_READ_ERRORS = (tf.errors.OpError, IndexError, ValueError)


@contextlib.contextmanager
def reading(prefix):
  """Turns TF's errors for unreadable / truncated checkpoint files into a CheckpointError."""
  try:
    yield
  except CheckpointError:
    raise
  except _READ_ERRORS as error:
    raise CheckpointError(f'cannot read checkpoint {prefix}: {one_line(error)}') from None


def resolve_checkpoint(path: str) -> str:
  """A checkpoint prefix from a prefix, an `.index` file or a directory (newest checkpoint), or
  a SavedModel directory (returned as is; `<export>/variables/variables` gives the export).

  TF1 checkpoints and TF1 Hub modules are refused with a one-line error naming what to use.
  """
  if not path:
    raise CheckpointError('no checkpoint path given')
  if path.endswith('.index'):
    path = path[:-len('.index')]
  if tf.io.gfile.isdir(path):
    if tf.io.gfile.exists(os.path.join(path, HUB_MODULE_FILE)):
      raise CheckpointError(f'{path} is a TF1 Hub module ({HUB_MODULE_FILE}), which TF2 cannot '
                            f'restore into a model: {USE_TF2_RELEASE}')
    if is_saved_model(path):
      return path.rstrip('/')
    prefix = tf.train.latest_checkpoint(path) or _newest_prefix_in(path)
    if prefix is None:
      raise CheckpointError(f'no checkpoint found in directory {path}')
    _refuse_tf1_checkpoint(prefix)
    return prefix
  export = os.path.dirname(os.path.dirname(path))
  if os.path.basename(os.path.dirname(path)) == 'variables' and is_saved_model(export):
    return export  # the SavedModel's own checkpoint: its keys only make sense with its graph
  if tf.io.gfile.exists(path + '.index'):
    _refuse_tf1_checkpoint(path)
    return path
  if tf.io.gfile.exists(path + '.meta'):
    _refuse_tf1_checkpoint(path)
  raise CheckpointError(f'no checkpoint at {path}: expected a prefix such as DIR/ckpt-1000 '
                        '(with DIR/ckpt-1000.index), a directory containing checkpoints or a '
                        'SavedModel directory')


def _refuse_tf1_checkpoint(prefix):
  """TF1 (Saver) checkpoints come with a `.meta` graph and name variables by graph names
  (`base_model/conv2d/kernel`), which have no place in a TF2 object graph."""
  if tf.io.gfile.exists(prefix + '.meta'):
    raise CheckpointError(f'{prefix} is a TF1 checkpoint ({os.path.basename(prefix)}.meta): its '
                          f'variables are named by the TF1 graph, not restorable here: '
                          f'{USE_TF2_RELEASE}')


def _newest_prefix_in(directory):
  """Highest-numbered `*-<N>` checkpoint in a directory without a `checkpoint` state file, else
  an unnumbered one."""
  numbered = numbered_checkpoints(directory)
  if numbered:
    return numbered[-1][1]
  unnumbered = tf.io.gfile.glob(os.path.join(directory, '*.index'))
  return max(unnumbered)[:-len('.index')] if unnumbered else None


def read_shapes(prefix: str) -> Dict[str, List[int]]:
  """{key: shape} of a checkpoint or SavedModel (training-checkpoint keys), with one-line errors
  for unreadable files and TF1 checkpoints."""
  if is_saved_model(prefix):
    return {key: v.shape.as_list() for key, v in saved_model_variables(prefix).items()}
  with reading(prefix):
    shapes = {key: list(shape) for key, shape in tf.train.list_variables(prefix)}
  if shapes and OBJECT_GRAPH_KEY not in shapes:
    raise CheckpointError(f'{prefix} is a TF1 (name-based) checkpoint: its variables are named '
                          f'by the TF1 graph, not restorable here: {USE_TF2_RELEASE}')
  return shapes


def read_model_values(prefix: str) -> Dict[str, object]:
  """{key: value} of the `model/...` variables of a checkpoint or SavedModel (optimizer slots
  skipped)."""
  if is_saved_model(prefix):
    return {key: v.numpy() for key, v in saved_model_variables(prefix).items()}
  with reading(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {key: reader.get_tensor(key) for key in _file_model_shapes(
        reader.get_variable_to_shape_map())}


def object_keys(skip_child=None, **roots) -> Dict[str, tf.Variable]:
  """{checkpoint key: variable} that `tf.train.Checkpoint(**roots)` would write.

  Breadth-first over trackable children, so each variable gets its shortest path, as TF does.
  `skip_child(name, child)` can prune edges (e.g. a loaded SavedModel's generic children).
  """
  keys = {}
  seen = set()
  queue = collections.deque((name, obj) for name, obj in roots.items())
  while queue:
    path, obj = queue.popleft()
    if id(obj) in seen:
      continue
    seen.add(id(obj))
    if isinstance(obj, tf.Variable):
      keys[path + VALUE_SUFFIX] = obj
      continue
    children = tf.train.TrackableView.children(obj)  # what a checkpoint saves
    queue.extend((f'{path}/{name}', child) for name, child in children.items()
                 if not (skip_child and skip_child(name, child)))
  return keys


class Mismatch(collections.namedtuple('Mismatch', 'missing unexpected reshaped')):
  """Keys the model has but the file lacks, the reverse, and keys whose shapes differ."""

  def __bool__(self):
    return bool(self.missing or self.unexpected or self.reshaped)

  def describe(self, limit=3):
    parts = []
    for label, keys in (('missing from the file', self.missing),
                        ('not in the model', self.unexpected),
                        ('with other shapes', self.reshaped)):
      if keys:
        shown = ', '.join(_short(k) for k in keys[:limit])
        parts.append(f'{len(keys)} {label} (e.g. {shown})')
    return '; '.join(parts)


def _short(key):
  return key.replace(VALUE_SUFFIX, '')


def _model_shapes(model):
  return {k: v.shape.as_list() for k, v in object_keys(model=model).items()}


def _file_model_shapes(file_shapes):
  return {k: s for k, s in file_shapes.items() if k.startswith(MODEL_PREFIX) and SLOT_MARKER not in k}


def compare_model(model, file_shapes: Dict[str, List[int]], skip_prefix: Optional[str] = None
                  ) -> Mismatch:
  """Model variables vs the `model/...` keys of a checkpoint (optimizer slots ignored)."""
  expected, in_file = _model_shapes(model), _file_model_shapes(file_shapes)
  if skip_prefix:
    expected = {k: s for k, s in expected.items() if not k.startswith(skip_prefix)}
    in_file = {k: s for k, s in in_file.items() if not k.startswith(skip_prefix)}
  return Mismatch(
      missing=sorted(set(expected) - set(in_file)),
      unexpected=sorted(set(in_file) - set(expected)),
      reshaped=sorted(k for k in set(expected) & set(in_file) if expected[k] != in_file[k]))


def _supervised_head_shapes(shapes):
  return {k: s for k, s in shapes.items() if k.startswith(SUPERVISED_HEAD_KEY)}


def describe_source(prefix: str) -> str:
  """'checkpoint <prefix>' or 'SavedModel <dir>', for messages."""
  return f'SavedModel {prefix}' if is_saved_model(prefix) else f'checkpoint {prefix}'


def _mismatch_error(prefix, mismatch):
  return CheckpointError(
      f'{describe_source(prefix)} does not match the model: {mismatch.describe()}. Architecture '
      f'flags ({", ".join(DETECTED_FLAGS)}) must be those the file was trained with')


def _head_summary(head_shapes):
  return ', '.join(f'{_short(k)[len(SUPERVISED_HEAD_KEY):]} {s}'
                   for k, s in sorted(head_shapes.items())) or 'none'


class _ModelWithoutSupervisedHead(tf.Module):
  """The model's object graph minus `supervised_head`, for restoring everything else."""

  def __init__(self, model):
    super().__init__()
    self.resnet_model = model.resnet_model
    self._projection_head = model.projection_head


def restore_initial_weights(model, path: str, allow_non_finite: bool = False
                            ) -> Tuple[str, bool]:
  """Restores the model only from `--checkpoint` (fresh fine-tune or pretrain start).

  Encoder and projection head must match exactly. The supervised head is restored only if the
  file has one of the same shape; otherwise (other class count, or a pretraining checkpoint
  without linear-eval head) the model's fresh head is kept and this is logged (K15).
  Returns (prefix, whether the supervised head was restored). The model must be built.
  A checkpoint with NaN/inf values is refused unless `allow_non_finite`.
  """
  prefix = resolve_checkpoint(path)
  file_shapes = read_shapes(prefix)
  check_finite(prefix, allow_non_finite)
  mismatch = compare_model(model, file_shapes, skip_prefix=SUPERVISED_HEAD_KEY)
  if mismatch:
    raise _mismatch_error(prefix, mismatch)
  model_head = _supervised_head_shapes(_model_shapes(model))
  file_head = _supervised_head_shapes(_file_model_shapes(file_shapes))
  restore_head = model.has_supervised_head and model_head == file_head
  root = model if restore_head else _ModelWithoutSupervisedHead(model)
  if is_saved_model(prefix):
    _assign_from_saved_model(root, prefix)
  else:
    with reading(prefix):
      status = tf.train.Checkpoint(model=root).read(prefix)
    status.expect_partial()  # optimizer slots and the step of the file are deliberately not loaded
    status.assert_existing_objects_matched()
  if model.has_supervised_head and not restore_head:
    # A file without a head (a pretraining checkpoint) is the normal start of a linear eval;
    # a head of another shape (other classes) is worth a warning.
    log = logging.warning if file_head else logging.info
    log('Supervised head not restored from %s (file: %s, model: %s); it starts fresh.', prefix,
        _head_summary(file_head), _head_summary(model_head))
  return prefix, restore_head


def restore_training_state(checkpoint: tf.train.Checkpoint, model, prefix: str,
                           allow_non_finite: bool = False):
  """Resumes model, step and optimizer from a run's own checkpoint; any mismatch is an error.

  A checkpoint with NaN/inf values (a diverged run) is refused unless `allow_non_finite`.
  """
  mismatch = compare_model(model, read_shapes(prefix))
  if mismatch:
    raise _mismatch_error(prefix, mismatch)
  check_finite(prefix, allow_non_finite)
  with reading(prefix):
    status = checkpoint.restore(prefix)
  status.assert_existing_objects_matched()
  # Every value of this run is in the file (asserted above); values only the file has, the loss
  # scale of a mixed_float16 run resumed in float32 (logged as a changed setting), are dropped
  # without TensorFlow's deferred 'unrestored values' warnings.
  status.expect_partial()
  return status


def restore_for_evaluation(model, path: str, allow_non_finite: bool = False
                           ) -> Tuple[str, Optional[int]]:
  """Model weights and global step for evaluation; strict on the model (K27) and on NaN/inf.

  A SavedModel has no step: it is taken from a `saved_model/<step>` directory name, else None.
  """
  prefix = resolve_checkpoint(path)
  mismatch = compare_model(model, read_shapes(prefix))
  if mismatch:
    raise _mismatch_error(prefix, mismatch)
  check_finite(prefix, allow_non_finite)
  if is_saved_model(prefix):
    _assign_from_saved_model(model, prefix)
    step = re.fullmatch(r'\d+', os.path.basename(prefix))  # a run's saved_model/<step>
    return prefix, int(step.group(0)) if step else None
  global_step = tf.Variable(0, dtype=tf.int64, trainable=False)
  with reading(prefix):
    status = tf.train.Checkpoint(model=model, global_step=global_step).read(prefix)
  status.expect_partial()
  status.assert_existing_objects_matched()
  return prefix, int(global_step.numpy())


# --- divergence: NaN/inf never saved, never silently restored --------------------------------------

def non_finite_variables(prefix: str) -> Dict[str, int]:
  """{key: number of NaN/inf elements} of a checkpoint's floating-point tensors (slots included)."""
  if is_saved_model(prefix):
    values = {key: v.numpy() for key, v in saved_model_variables(prefix).items()
              if v.dtype.is_floating}
    return {key: int(value.size - np.count_nonzero(np.isfinite(value)))
            for key, value in values.items() if not np.all(np.isfinite(value))}
  with reading(prefix):
    reader = tf.train.load_checkpoint(prefix)
    found = {}
    for key, dtype in reader.get_variable_to_dtype_map().items():
      if dtype.is_floating:
        count = int(np.size(reader.get_tensor(key)) -
                    np.count_nonzero(np.isfinite(reader.get_tensor(key))))
        if count:
          found[key] = count
    return found


def check_finite(prefix: str, allow_non_finite: bool = False) -> None:
  """Refuses (CheckpointError) a checkpoint holding NaN/inf values; only warns if allowed."""
  bad = non_finite_variables(prefix)
  if not bad:
    return
  shown = ', '.join(_short(key) for key in sorted(bad)[:3])
  what = f'{describe_source(prefix)} contains NaN/inf values in {len(bad)} tensors (e.g. {shown})'
  if allow_non_finite:
    logging.warning('%s; restoring it anyway (--allow_non_finite_checkpoint).', what)
    return
  raise CheckpointError(f'{what}: it comes from a diverged run. Resume from an earlier checkpoint '
                        '(e.g. remove the newer ones, or pass it as --checkpoint to a new '
                        '--model_dir), or pass --allow_non_finite_checkpoint=true to load it anyway')


def non_finite_names(variables) -> List[str]:
  """Names of the floating-point variables holding any NaN/inf value."""
  return [v.name for v in variables
          if v.dtype.is_floating and not bool(tf.reduce_all(tf.math.is_finite(v)))]


def assert_all_finite(variables, step: int, last_good: Optional[str], action: str = 'saved'
                      ) -> None:
  """Before a save or export: TrainingError naming the step and the last good checkpoint."""
  bad = non_finite_names(variables)
  if bad:
    raise TrainingError(
        f'training diverged at step {step}: {len(bad)} of {len(variables)} variables hold NaN/inf '
        f'(e.g. {", ".join(bad[:3])}); nothing was {action}. The last good checkpoint '
        f'({last_good or "none"}) is kept: lower --learning_rate or check the data')


# --- optimizer of a checkpoint ---------------------------------------------------------------------

# Slot names of legacy optimizers (this port's LARS; the reference's TF <= 2.10 Keras optimizers).
_SLOT_OPTIMIZERS = {'Momentum': 'lars', 'momentum': 'momentum', 'm': 'adam', 'v': 'adam'}
_NON_LEGACY_SLOT = re.compile(r'optimizer/_variables/(\d+)/\.ATTRIBUTES/VARIABLE_VALUE')


def checkpoint_optimizer(file_shapes: Dict[str, List[int]]) -> Optional[str]:
  """'lars', 'momentum' or 'adam' from a checkpoint's optimizer keys; None without slots.

  Legacy optimizers name their slots (`.OPTIMIZER_SLOT/optimizer/<slot>`). The non-legacy Keras
  optimizers keep an unnamed list `optimizer/_variables/<i>` (0 = iterations): Adam has two
  slots per variable, m and v, of the same shape and adjacent (1-2, 3-4, ...); SGD one.
  """
  for key in file_shapes:
    if SLOT_MARKER in key:
      slot = key.split(SLOT_MARKER, 1)[1].split('/')[1]
      return _SLOT_OPTIMIZERS.get(slot)
  shapes = {int(m.group(1)): shape for m in map(_NON_LEGACY_SLOT.fullmatch, file_shapes)
            if m and int(m.group(1)) > 0 for shape in [file_shapes[m.group(0)]]}
  if not shapes:
    return None
  ordered = [shapes[i] for i in sorted(shapes)]
  pairs_equal = len(ordered) % 2 == 0 and all(
      ordered[i] == ordered[i + 1] for i in range(0, len(ordered), 2))
  return 'adam' if pairs_equal else 'momentum'


def check_optimizer_matches(prefix: str, optimizer_name: str) -> None:
  """CheckpointError if a checkpoint being resumed holds another optimizer's state."""
  found = checkpoint_optimizer(read_shapes(prefix))
  if found is not None and found != optimizer_name:
    raise CheckpointError(
        f'checkpoint {prefix} holds the state of --optimizer={found}, not --optimizer='
        f'{optimizer_name}: resume with --optimizer={found}, or start a new --model_dir with '
        f'--checkpoint={prefix} to train its weights with {optimizer_name}')


# --- SavedModels as weight sources (this project's exports and the official TF2 ones, K32) --------

# Children every object restored from a SavedModel gets from serialisation (Keras layers: the
# `variables` lists; the export root: `trainable_variables_list`). They alias the real variables
# under other paths (`variables/17`), so walking them would produce non-training keys.
_GENERIC_CHILDREN = frozenset({
    'variables', 'trainable_variables', 'non_trainable_variables', 'keras_api',
    'regularization_losses', 'signatures', 'trainable_variables_list'})

_loaded_cache = {}  # {path: (file stamp, {key: variable})}: a source is read twice (shapes, values)


def is_saved_model(path: str) -> bool:
  return bool(path) and tf.io.gfile.isdir(path) and tf.io.gfile.exists(
      os.path.join(path, SAVED_MODEL_FILE))


def load_saved_model(saved_model_dir: str):
  """`tf.saved_model.load` of a SimCLR export, with one-line errors saying what anything else is."""
  if tf.io.gfile.exists(os.path.join(saved_model_dir, HUB_MODULE_FILE)):
    raise CheckpointError(f'{saved_model_dir} is a TF1 Hub module ({HUB_MODULE_FILE}), which TF2 '
                          f'cannot restore into a model: {USE_TF2_RELEASE}')
  if not is_saved_model(saved_model_dir):
    raise CheckpointError(f'no SavedModel at {saved_model_dir} ({SAVED_MODEL_FILE} not found)')
  try:
    loaded = tf.saved_model.load(saved_model_dir)
  except (tf.errors.OpError, ValueError, OSError) as error:
    if 'tags' in str(error):  # several MetaGraphs: only TF1 exports (Hub, Estimator) have those
      raise CheckpointError(f'{saved_model_dir} is a TF1 SavedModel with several MetaGraphs (a '
                            f'TF1 Hub module\'s layout), no object graph: {USE_TF2_RELEASE}'
                            ) from None
    raise CheckpointError(f'cannot load SavedModel {saved_model_dir}: {one_line(error)}'
                          ) from None
  if not hasattr(loaded, 'model'):
    if hasattr(loaded, 'prune'):  # what tf.saved_model.load returns for a TF1 graph
      raise CheckpointError(f'{saved_model_dir} is a TF1 SavedModel (a graph with signatures, '
                            f'no object graph): {USE_TF2_RELEASE}')
    raise CheckpointError(f'{saved_model_dir} is a SavedModel but not of a SimCLR model: its '
                          'root has no `model` (exports of this project and the official TF2 '
                          'SavedModels keep the network there)')
  return loaded


def _is_function(obj) -> bool:
  return isinstance(obj, (tf.types.experimental.GenericFunction,
                          tf.types.experimental.ConcreteFunction))


def loaded_variables(loaded) -> Dict[str, tf.Variable]:
  """{training-checkpoint key: variable} of an object returned by tf.saved_model.load.

  The SavedModel's own `variables/` checkpoint names each variable by its shortest path from the
  export root (`trainable_variables_list/5/...`, `model/resnet_model/variables/17/...`), so
  instead `loaded.model` is walked along its original attribute names, breadth-first (shortest
  path per variable, as tf.train.Checkpoint does). Works whether `trainable_variables_list` is
  filled or empty.
  """
  def generic(name, child):
    return name in _GENERIC_CHILDREN or is_keras_tracking_attribute(name) or _is_function(child)

  return object_keys(skip_child=generic, model=loaded.model)


def _stamp(path):
  files = (os.path.join(path, SAVED_MODEL_FILE), os.path.join(path, 'variables',
                                                               'variables.index'))
  return tuple((stat.length, stat.mtime_nsec) for stat in map(_stat_or_none, files) if stat)


def _stat_or_none(path):
  return tf.io.gfile.stat(path) if tf.io.gfile.exists(path) else None


def _read_saved_model(path: str):
  """(loaded object, loaded_variables) of the SavedModel at `path`; the last one read is kept
  while its files are unchanged, since a restore reads shapes first and values after."""
  path = path.rstrip('/')
  stamp = _stamp(path)
  cached = _loaded_cache.get(path)
  if cached is None or cached[0] != stamp:
    _loaded_cache.clear()
    loaded = load_saved_model(path)
    variables = loaded_variables(loaded)
    if not variables:
      raise CheckpointError(f'SavedModel {path} holds no variables under its `model`')
    _loaded_cache[path] = (stamp, loaded, variables)
  return _loaded_cache[path][1:]


def saved_model_variables(path: str) -> Dict[str, tf.Variable]:
  """loaded_variables of the SavedModel at `path` (read once while its files are unchanged)."""
  return _read_saved_model(path)[1]


def saved_model_object(path: str):
  """The object tf.saved_model.load returns for `path` (read once while its files are unchanged)."""
  return _read_saved_model(path)[0]


def _assign_from_saved_model(root, prefix):
  """Assigns every variable of `root` (model-like) from the SavedModel; shapes were compared
  before, so this cannot stop half-way on a mismatch."""
  source = saved_model_variables(prefix)
  targets = object_keys(model=root)
  missing = sorted(set(targets) - set(source))
  if missing:  # callers compare first; this guards the no-partial-restore promise
    raise _mismatch_error(prefix, Mismatch(missing, [], []))
  for key, variable in targets.items():
    variable.assign(source[key])
