"""A tiny pretraining with the Gaussian blur on, through the public run()."""

import math

import pytest
import tensorflow as tf

from simclr_tf2.training.callbacks import Callback
from simclr_tf2.config import Config
from simclr_tf2.training.runner import run
from simclr_tf2.training.trainer import default_callbacks


@pytest.mark.slow
def test_pretraining_with_blur_end_to_end(tmp_path):
  config = Config(dataset='digits', image_size=32, resnet_depth=18, train_batch_size=16,
                  train_steps=2, checkpoint_steps=1, eval_steps=1, eval_batch_size=16,
                  mode='train_then_eval', train_mode='pretrain', use_blur=True, use_tpu=False,
                  seed=0, model_dir=str(tmp_path / 'run'))
  recorder = RecordLogs()
  result = run(config, strategy=tf.distribute.get_strategy(),
               callbacks=default_callbacks(config) + [recorder], export=False)
  assert result.checkpoint.endswith('ckpt-2') and tf.io.gfile.exists(result.checkpoint + '.index')
  assert [step for step, _ in recorder.logs] == [1, 2]
  for _, logs in recorder.logs:
    assert math.isfinite(logs['train/contrast_loss']) and logs['train/contrast_loss'] > 0
  assert result.metrics['global_step'] == 2
  assert all(math.isfinite(value) for value in result.metrics.values())


class RecordLogs(Callback):

  def __init__(self):
    self.logs = []

  def on_block_end(self, trainer, step, logs):
    self.logs.append((step, dict(logs)))
