"""The few places where this package relies on TensorFlow / Keras internals, in one module.

Each one is needed for fidelity or a quiet console, and none has a public equivalent in
TensorFlow 2.21 / tf_keras 2.21. tests/unit/test_compat.py exercises every function here, so an
upgrade that changes one fails loudly there, not silently in a checkpoint or an export.

TensorFlow-free at import time.
"""


def set_layer_name(layer, name: str) -> None:
  """Gives a Keras layer exactly `name`. The constructor's `name=` is made unique per model
  (`linear_layer_1`, ...), but the reference's heads reuse one name in several places and the
  LARS / weight-decay rules match on it, so the name is set after construction."""
  layer._name = name  # pylint: disable=protected-access


def is_keras_tracking_attribute(attribute: str) -> bool:
  """Whether an attribute of a loaded (restored) Keras object is one of Keras' bookkeeping
  children (`_self_...`), not a layer or variable of the model."""
  return attribute.startswith('_self_')


def capture_named(graph, tensor, name: str):
  """Captures `tensor` into a FuncGraph under `name`. Without a name, TensorFlow names a capture
  by an integer, which a SavedModel signature cannot use as an argument name (it renames them
  and logs every one of them at save time)."""
  return graph.capture(tensor, name=name)


def mean_count(metric) -> float:
  """How many values a Keras `Mean` metric has averaged (its `count` state variable)."""
  return float(metric.count.numpy())


def create_optimizer_variables(optimizer, variables, with_gradients) -> None:
  """Creates an optimizer's slots now, as its first `apply_gradients` over `variables` would
  when only `with_gradients` (a sub-list) get a gradient: the legacy Keras optimizers drop the
  others first, the newer ones build for every variable passed. Created inside the first traced
  step instead, they make `tf.function` trace that step a second time (a function that created
  variables is retraced without variable creation), doubling the start-up cost of every run.
  The legacy optimizers have no public method for this."""
  import tf_keras  # pylint: disable=import-outside-toplevel  (this module imports no TF at load)
  if isinstance(optimizer, tf_keras.optimizers.legacy.Optimizer):
    optimizer._create_all_weights(with_gradients)  # pylint: disable=protected-access
  else:
    optimizer.build(variables)
