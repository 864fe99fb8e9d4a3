"""Reading what a run wrote for TensorBoard."""

import glob

import tensorflow as tf


def read_scalars(directory) -> dict:
  """{tag: [(step, value)]} from the event files in a directory."""
  found = {}
  for path in glob.glob(f'{directory}/events.out.tfevents.*'):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        found.setdefault(value.tag, []).append(
            (event.step, float(tf.make_ndarray(value.tensor))))
  return found
