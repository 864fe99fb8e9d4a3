"""SavedModel export of a SimCLR model and reading variables back from SavedModels
(docs/architecture-notes.md, "SavedModel layout"; Kn: docs/differences.md).

Layout of an export (same as the reference, so existing consumers keep working):
  root.model                      the model's variables along its checkpoint paths (variable_tree)
  root.trainable_variables_list   model.trainable_variables at export time
  root(images, trainable)         dict of the endpoints (ENDPOINT_NAMES; `logits_sup` only when the
                                  model has a supervised head, K10), never blurred (K25)
  root.signatures['serving_default'](images=...)   the trainable=False function (K12)
and TensorFlow Hub's Reusable SavedModel interface, so `hub.KerasLayer(export, trainable=True)`
fine-tunes the encoder:
  root(images, training=bool)     the same function as `trainable=` (Hub's argument name)
  root.variables, root.trainable_variables, root.regularization_losses (empty: weight decay
                                  belongs to the fine-tuning optimizer, as in the reference)
`loaded(x, trainable=True)` is differentiable (K13) without any custom gradient: the exported
functions contain no custom-gradient op (see _single_replica).
"""

import os
import re
import uuid
from typing import Dict

import numpy as np
import tensorflow as tf

from simclr_tf2.architecture import VALUE_SUFFIX
from simclr_tf2.compat import capture_named
# load_saved_model is re-exported: callers imported it from here before it moved.
from simclr_tf2.network.checkpoint import (  # noqa: F401  pylint: disable=unused-import
    load_saved_model, loaded_variables, object_keys)
from simclr_tf2.model_dir import SAVED_MODEL_SUBDIR

# Named like __call__'s argument: SavedModel export asks for the concrete functions again by
# their structured signature (which carries the argument name); an unnamed spec would retrace.
IMAGES_SPEC = tf.TensorSpec([None, None, None, 3], tf.float32, name='inputs')
SERVING_INPUT_NAME = 'images'

def variable_tree(model) -> tf.Module:
  """Plain tf.Modules mirroring the model's checkpoint object graph: one attribute per edge
  (`resnet_model`, `block_groups`, `0`, ..., `kernel`), the model's own variables at the leaves.

  Saved in place of the Keras model, so SavedModel export does not go through Keras
  serialisation (which traces every layer's call functions and takes most of the export time)
  while the variables keep the training checkpoint's paths under `root.model`.
  """
  root = tf.Module()
  reserved = set(dir(root))
  for key, variable in object_keys(model=model).items():
    *parents, leaf = key[:-len(VALUE_SUFFIX)].split('/')[1:]
    node = root
    for name in parents:
      if name in reserved:
        raise ValueError(f'checkpoint key {key} cannot be mirrored: {name!r} is a tf.Module '
                         'attribute')
      if not hasattr(node, name):
        setattr(node, name, tf.Module())
      node = getattr(node, name)
    setattr(node, leaf, variable)
  return root


def _single_replica(function):
  """Calls `function` in a cross-replica context, where synchronized batch norm computes the
  statistics of its own batch (tf.nn.moments, as `global_bn=False` layers do).

  In the default replica context sync BN all-reduces its sums with `ReplicaContext.all_reduce`,
  an identity here whose custom gradient calls `all_reduce` again. SaveOptions(
  experimental_custom_gradients=True) saves only the outer custom gradients, not the ones created
  while tracing those, so loading logs "Importing a function ... with ops with unsaved custom
  gradients" once per gradient function. An exported function sees one batch, so the all-reduce
  has nothing to synchronize; skipping it removes every custom-gradient op. Inside a strategy's
  scope the context is cross-replica already.
  """
  context = tf.distribute.get_replica_context()
  if context is None:
    return function()
  return context.merge_call(lambda _: function())


class _ExportModule(tf.Module):
  """The exported root object. Call with a 3-channel batch and a Python bool, either positional
  or `trainable=` (the reference's name) or `training=` (TensorFlow Hub's name).

  Only for `tf.saved_model.save`: SavedModel export retraces every concrete function inside its
  save context (a separate tracing-cache key), so the traces made before saving only record the
  two signatures and run no model (`_recording`); calling this object eagerly afterwards would
  return those empty traces. Load the export instead.
  """

  # Reusable SavedModel attributes. tf.Module computes these two as read-only properties, which
  # are not saved; plain class attributes let __init__ store them as saved instance attributes.
  variables = ()
  trainable_variables = ()

  def __init__(self, model):
    super().__init__()
    if not model.variables:  # variables created inside the trace would escape the tree below
      model.create_variables()
    self.model = variable_tree(model)
    # The reference's name (it could not overwrite the tf.Module property).
    self.trainable_variables_list = model.trainable_variables
    self.trainable_variables = model.trainable_variables
    self.variables = model.variables
    self.regularization_losses = []
    # A bound method is not tracked: the Keras model itself is not serialised.
    self._call_with_endpoints = model.call_with_endpoints
    self._recording = True
    for mode in (True, False):
      self.__call__.get_concrete_function(IMAGES_SPEC, mode)
      self.__call__.get_concrete_function(IMAGES_SPEC, training=mode)
    self._recording = False

  @tf.function
  def __call__(self, inputs, trainable=None, training=None):
    if self._recording:
      return {}
    if training is not None:
      # Hub's name for the same mode: call the `trainable` function rather than tracing the
      # model twice more (the save retraces every concrete function).
      if trainable is not None:
        raise TypeError('pass `trainable` or `training`, not both')
      return self.__call__.get_concrete_function(IMAGES_SPEC, training)(inputs)
    # blur=False: an exported pretraining model called with trainable=True must not augment.
    return _single_replica(
        lambda: self._call_with_endpoints(inputs, training=trainable, blur=False))

  @tf.function(input_signature=[tf.TensorSpec(IMAGES_SPEC.shape, IMAGES_SPEC.dtype,
                                              name=SERVING_INPUT_NAME)])
  def serve(self, images):
    """The `serving_default` signature: the trainable=False function under the input name
    `images`. Called through the concrete function so the save traces it only once."""
    inference = self.__call__.get_concrete_function(IMAGES_SPEC, False)
    # Calling it captures the variable handles it reads; left to TensorFlow, each capture is
    # named by a unique integer, which a signature cannot use as an argument name, and the save
    # logs one INFO line listing all of them as renamed. Captured first under valid names, the
    # call reuses these captures and the signature's arguments keep their names.
    graph = tf.compat.v1.get_default_graph()
    for index, handle in enumerate(inference.captured_inputs):
      capture_named(graph, handle, f'variable_{index}')
    return inference(images)


def export_saved_model(model, export_dir: str) -> str:
  """Writes the SavedModel to `export_dir`, replacing an existing export only once complete.

  The export is written to a temporary sibling directory and renamed into place; on local
  filesystems readers therefore never see a partial export. (On object stores such as gs://,
  rename is a copy and not atomic.)
  """
  module = _ExportModule(model)
  export_dir = export_dir.rstrip('/')
  token = uuid.uuid4().hex[:8]
  staging, retired = f'{export_dir}.tmp-{token}', f'{export_dir}.old-{token}'
  parent = os.path.dirname(export_dir)
  if parent:
    tf.io.gfile.makedirs(parent)
  try:
    tf.saved_model.save(
        module, staging, signatures={'serving_default': module.serve},
        options=tf.saved_model.SaveOptions(experimental_custom_gradients=True))
    _replace_directory(staging, export_dir, retired)
  finally:
    if tf.io.gfile.exists(staging):
      tf.io.gfile.rmtree(staging)
  return export_dir


def _replace_directory(source: str, target: str, retired: str) -> None:
  """Renames `source` to `target`; an existing `target` is moved aside and put back on failure."""
  had_target = tf.io.gfile.exists(target)
  if had_target:
    tf.io.gfile.rename(target, retired)
  try:
    tf.io.gfile.rename(source, target)
  except BaseException:
    if had_target:
      tf.io.gfile.rename(retired, target)
    raise
  if had_target:
    tf.io.gfile.rmtree(retired)


def prune_exports(export_root: str, keep: int) -> None:
  """Keeps the `keep` highest numeric sub-directories of `export_root` (keep <= 0: all)."""
  if keep <= 0 or not tf.io.gfile.isdir(export_root):
    return
  steps = sorted(int(name.rstrip('/')) for name in tf.io.gfile.listdir(export_root)
                 if re.fullmatch(r'\d+/?', name))
  for step in steps[:-keep]:
    tf.io.gfile.rmtree(os.path.join(export_root, str(step)))


def export_for_step(model, model_dir: str, global_step: int, keep_hub_module_max: int) -> str:
  """Exports to `model_dir/saved_model/<global_step>` and prunes older exports."""
  export_root = os.path.join(model_dir, SAVED_MODEL_SUBDIR)
  path = export_saved_model(model, os.path.join(export_root, str(int(global_step))))
  prune_exports(export_root, keep_hub_module_max)
  return path


def read_saved_model_variables(saved_model_dir: str) -> Dict[str, np.ndarray]:
  """Variable values of an export directory (this project's or the reference's, with a filled or
  empty `trainable_variables_list`), keyed like a training checkpoint:
  `model/resnet_model/.../kernel/.ATTRIBUTES/VARIABLE_VALUE`."""
  return loaded_model_variables(load_saved_model(saved_model_dir))


def loaded_model_variables(loaded) -> Dict[str, np.ndarray]:
  """Like read_saved_model_variables, for an object returned by tf.saved_model.load (walked
  along its original attribute names: checkpoint.loaded_variables)."""
  return {key: variable.numpy() for key, variable in loaded_variables(loaded).items()}
