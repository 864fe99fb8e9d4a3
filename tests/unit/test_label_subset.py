"""--label_fraction: class-balanced seeded subsets of the train split, read through a source.
Counts are hand-derived: digits' train split has 1437 images of 10 classes (140-147 each)."""

import numpy as np
import pytest

from simclr_tf2.config import Config
from simclr_tf2.data import get_source
from simclr_tf2.data.label_subset import (SUBSET_FILE, label_subset_source, select_label_subset,
                                          write_label_subset)
from simclr_tf2.errors import ConfigError


def test_subset_takes_the_same_count_of_every_class_with_a_seed():
  labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
  chosen = select_label_subset(labels, 3, fraction=0.3, seed=0)  # 0.3 * 100 / 3 = 10 per class
  assert np.bincount(labels[chosen]).tolist() == [10, 10, 10]
  assert chosen == sorted(set(chosen))
  assert select_label_subset(labels, 3, 0.3, seed=0) == chosen
  assert select_label_subset(labels, 3, 0.3, seed=1) != chosen


def test_too_small_a_fraction_is_a_one_line_error():
  labels = np.arange(100) % 10
  with pytest.raises(ConfigError, match=r'^--label_fraction=0.04: .* less than one example'):
    select_label_subset(labels, 10, fraction=0.04)  # 0.04 * 100 / 10 = 0.4 -> 0


def test_digits_ten_percent_source_and_its_record_reused(tmp_path):
  config = Config(dataset='digits', train_mode='finetune', label_fraction=0.1, seed=3,
                  model_dir=str(tmp_path))
  source, record = label_subset_source(config, get_source('digits'))
  # 0.1 * 1437 / 10 = 14.37 -> 14 per class.
  assert source.num_examples('train') == 140 and source.num_examples('test') == 360
  labels = [int(label) for _, label in source.as_dataset('train', shuffle_files=True, seed=1)]
  assert sorted(np.bincount(labels).tolist()) == [14] * 10
  assert len(record['example_ids']) == 140 and record['example_ids'][0].startswith('digits:train[')
  write_label_subset(str(tmp_path), record)
  assert (tmp_path / SUBSET_FILE).exists()
  # A rerun with another seed reads the recorded subset back instead of drawing a new one.
  again, second = label_subset_source(config.replace(seed=4), get_source('digits'))
  assert second['example_ids'] == record['example_ids'] and again.indices == source.indices
  with pytest.raises(ConfigError, match='use a new model_dir'):
    label_subset_source(config.replace(label_fraction=0.2), get_source('digits'))


def test_label_fraction_applies_to_supervised_modes_only():
  with pytest.raises(ConfigError, match='--label_fraction=0.1: applies to train_mode=finetune'):
    Config(train_mode='pretrain', label_fraction=0.1)
