"""TensorBoard scalars: the one way this package writes them (training, evaluation, probes).

TensorFlow-free at import time (callbacks import this before TensorFlow is quieted).
"""

from typing import Mapping


def summary_writer_for(strategy, directory: str):
  """A writer into `directory` on the process that saves summaries (the chief of a multi-worker
  strategy); elsewhere a writer that writes nothing."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  if strategy.extended.should_save_summary:
    return tf.summary.create_file_writer(directory)
  return tf.summary.create_noop_writer()


def write_scalars(writer, scalars: Mapping[str, float], step: int) -> None:
  """Writes {tag: value} at `step` and flushes, so TensorBoard shows them at once."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  with writer.as_default():
    for tag, value in scalars.items():
      tf.summary.scalar(tag, value, step=step)
  writer.flush()
