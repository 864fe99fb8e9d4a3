"""Input pipelines inside real runs: a corrupt image stops a run with one line, and a mirrored
pipeline starts without tf.data warnings (a fresh process)."""

import os
import subprocess
import sys

import pytest
import tensorflow as tf

from golden_data import REPO
from simclr_tf2 import data
from simclr_tf2.training.runner import run
from simclr_tf2.config import Config

CONTEXT = tf.distribute.InputContext()  # one pipeline, one replica


def test_a_run_stops_at_a_corrupt_image_with_one_line_error(folder, tmp_path):
  config = Config(dataset='image_folder', data_dir=str(folder), skip_corrupt_images=False,
                  train_mode='finetune', mode='train', image_size=8, resnet_depth=18,
                  train_batch_size=4, train_steps=2, use_tpu=False, seed=0,
                  model_dir=str(tmp_path / 'run'))
  with pytest.raises(data.CorruptImageError, match=r'^image_folder: cannot decode image '
                     rf'{folder}/train/dog/(bad|truncated)\.jpg \(skip_corrupt_images=false\)$'):
    run(config, strategy=tf.distribute.get_strategy())


def test_mirrored_training_pipeline_starts_without_a_slack_warning(tmp_path):
  """In a fresh process with TensorFlow's C++ log on: no `Could not find a final prefetch`."""
  script = tmp_path / 'pipeline.py'
  script.write_text(
      'import tensorflow as tf\n'
      'from simclr_tf2 import data\n'
      'strategy = tf.distribute.MirroredStrategy()\n'
      'dataset = data.build_distributed_dataset(\n'
      '    data.get_source("digits", image_size=8), 8, True, strategy, split="train",\n'
      '    train_mode="pretrain", image_size=8, color_jitter_strength=0.5, cache_dataset=False)\n'
      'next(iter(dataset))\n'
      'print("first batch")\n')
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '0', 'PYTHONPATH': str(REPO)}
  result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 0 and 'first batch' in result.stdout, result.stderr
  assert 'port.cc' in result.stderr  # TensorFlow's C++ INFO lines are shown
  assert 'prefetch' not in result.stderr, result.stderr
