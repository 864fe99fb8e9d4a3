"""Label fractions (SimCLRv2 stage 2): fine-tune or distil on a class-balanced subset of the
labeled train split, e.g. 1 % or 10 % of the labels as in the paper.

`select_label_subset` draws the same number of examples from every class (seeded, so reruns
agree); `LabelSubsetSource` is a source whose train split holds only those examples. The chosen
example ids go to model_dir/label_subset.json and a resumed or repeated run reads them back, so
the subset never changes under a run. ImageNet recipes may instead name the TFDS splits of
`imagenet2012_subset/1pct` and `/10pct` (the paper's own subsets).
"""

import json
import os
from typing import List, Optional

import numpy as np
import tensorflow as tf

from simclr_tf2.errors import ConfigError
from simclr_tf2.model_dir import write_json

SUBSET_FILE = 'label_subset.json'


def select_label_subset(labels, num_classes: int, fraction: float, seed: int = 0) -> List[int]:
  """Sorted indices of round(fraction * N / num_classes) examples of each class (every example
  of a class with fewer), drawn with `seed`. One-line ConfigError when that is under one."""
  labels = np.asarray(labels)
  per_class = int(round(fraction * len(labels) / num_classes))
  if per_class < 1:
    raise ConfigError(f'--label_fraction={fraction}: {fraction} of {len(labels)} examples gives '
                      f'less than one example for each of the {num_classes} classes')
  rng = np.random.default_rng(seed)
  chosen = []
  for label in range(num_classes):
    members = np.flatnonzero(labels == label)
    chosen.extend(rng.permutation(members)[:per_class].tolist())
  return sorted(chosen)


class LabelSubsetSource:
  """`source` with `split` restricted to the examples at `indices` (its unshuffled order);
  other splits and attributes are the source's own."""

  def __init__(self, source, split: str, indices):
    self.source = source
    self.split = split
    self.indices = sorted(int(i) for i in indices)
    self.num_classes = source.num_classes
    self.class_names = source.class_names
    self.name = getattr(source, 'name', type(source).__name__)

  def num_examples(self, split):
    return len(self.indices) if split == self.split else self.source.num_examples(split)

  def example_ids(self, split):
    ids = self.source.example_ids(split)
    return [ids[i] for i in self.indices] if split == self.split else ids

  def labels(self, split):
    labels = np.asarray(self.source.labels(split))
    return labels[self.indices] if split == self.split else labels

  def as_dataset(self, split, shuffle_files, input_context=None, seed=None):
    if split != self.split:
      return self.source.as_dataset(split, shuffle_files, input_context, seed)
    keep = np.zeros(self.source.num_examples(split), bool)
    keep[self.indices] = True
    keep = tf.constant(keep)
    dataset = self.source.as_dataset(split, shuffle_files=False).enumerate()
    dataset = dataset.filter(lambda index, example: tf.gather(keep, index))
    dataset = dataset.map(lambda index, example: example).apply(
        tf.data.experimental.assert_cardinality(len(self.indices)))
    if input_context and input_context.num_input_pipelines > 1:
      dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if shuffle_files:
      dataset = dataset.shuffle(len(self.indices), seed=seed)
    return dataset


def label_subset_source(config, source):
  """(source restricted to config.label_fraction of its train split, the record to write) —
  (source, None) at fraction 1. The subset recorded in model_dir, if any, is reused."""
  if config.label_fraction >= 1:
    return source, None
  all_ids = source.example_ids(config.train_split)
  recorded = read_label_subset(config.model_dir)
  if recorded is not None:
    if (recorded.get('train_split') != config.train_split or
        recorded.get('label_fraction') != config.label_fraction):
      raise ConfigError(f'--label_fraction={config.label_fraction}: model_dir holds a label '
                        f'subset of {recorded.get("label_fraction")} of split '
                        f'{recorded.get("train_split")}; use a new model_dir')
    position = {example_id: index for index, example_id in enumerate(all_ids)}
    missing = [i for i in recorded['example_ids'] if i not in position]
    if missing:
      raise ConfigError(f'{SUBSET_FILE}: example {missing[0]} is not in split '
                        f'{config.train_split} of {config.dataset}')
    indices = [position[i] for i in recorded['example_ids']]
  else:
    seed = config.seed or 0
    indices = select_label_subset(source.labels(config.train_split), source.num_classes,
                                  config.label_fraction, seed)
    recorded = dict(dataset=config.dataset, train_split=config.train_split,
                    label_fraction=config.label_fraction, seed=seed,
                    example_ids=[all_ids[i] for i in indices])
  return LabelSubsetSource(source, config.train_split, indices), recorded


def read_label_subset(model_dir: Optional[str]) -> Optional[dict]:
  path = os.path.join(model_dir, SUBSET_FILE) if model_dir else None
  if not path or not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def write_label_subset(model_dir: str, recorded: Optional[dict]) -> None:
  """Writes the subset's record unless there is none or model_dir already holds it."""
  if recorded is not None and read_label_subset(model_dir) is None:
    write_json(os.path.join(model_dir, SUBSET_FILE), recorded)
