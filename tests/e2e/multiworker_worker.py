"""One process of tests/test_multiworker.py: trains a tiny pretraining config on fixed batches.

  python tests/multiworker_worker.py mirrored OUT.npz MODEL_DIR INIT_PREFIX
      one process, MirroredStrategy over two logical CPUs; first writes the shared initial
      weights to INIT_PREFIX
  TF_CONFIG=... python tests/multiworker_worker.py worker OUT.npz MODEL_DIR INIT_PREFIX [HANG_STEP]
      one worker of a MultiWorkerMirroredStrategy cluster (build_strategy picks it from
      TF_CONFIG), one CPU replica; with HANG_STEP, after that step's callbacks every worker
      writes the logs so far as JSON to OUT.npz.step<HANG_STEP>, then worker 1 sleeps until it
      is killed

Both kinds see the same per-replica batches: the global batch of step s is a fixed array, and
replica r gets its r-th slice, whatever the input pipeline layout. Training starts from the
newest checkpoint of MODEL_DIR (if any), else from INIT_PREFIX, and feeds the batches from the
restored step on. OUT.npz: the model's weights by checkpoint key, the logs of every block, the
first and the last step, the process id.
"""

import json
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from simclr_tf2.network import checkpoint as ckpt_lib  # noqa: E402
from simclr_tf2.distribute import build_strategy  # noqa: E402
from simclr_tf2.training.trainer import Trainer, default_callbacks  # noqa: E402
from simclr_tf2.training.callbacks import Callback  # noqa: E402
from simclr_tf2.config import Config  # noqa: E402
from simclr_tf2.training.task import SimCLRTask  # noqa: E402

TRAIN_STEPS = 3
GLOBAL_BATCH = 16
REPLICAS = 2
IMAGE_SIZE = 8
NUM_CLASSES = 10
NUM_TRAIN_EXAMPLES = 160  # only sets the schedule's length; warm-up is off
DATA_SEED = 1234

CONFIG = Config(
    dataset='digits', resnet_depth=18, image_size=IMAGE_SIZE, train_batch_size=GLOBAL_BATCH,
    train_steps=TRAIN_STEPS, use_blur=False, seed=0, optimizer='lars', global_bn=True,
    learning_rate=0.1, warmup_epochs=0, use_tpu=False)  # small steps: rounding stays small


def global_batches():
  """[steps, GLOBAL_BATCH, s, s, 6] images in [0, 1) and one-hot labels, the same everywhere."""
  rng = np.random.default_rng(DATA_SEED)
  images = rng.uniform(size=(TRAIN_STEPS, GLOBAL_BATCH, IMAGE_SIZE, IMAGE_SIZE, 6))
  labels = np.eye(NUM_CLASSES)[rng.integers(0, NUM_CLASSES, (TRAIN_STEPS, GLOBAL_BATCH))]
  return images.astype(np.float32), labels.astype(np.float32)


def replica_batches(strategy, first_step):
  """A distributed dataset giving replica r slice r of every global batch from first_step on."""
  images, labels = global_batches()
  per_replica = GLOBAL_BATCH // REPLICAS
  assert strategy.num_replicas_in_sync == REPLICAS

  def dataset_fn(input_context):
    if input_context.num_input_pipelines == REPLICAS:  # a pipeline per replica (per worker)
      replicas = [input_context.input_pipeline_id]
    else:  # one pipeline, whose consecutive elements go to replicas 0, 1, 0, 1, ...
      assert input_context.num_input_pipelines == 1, input_context
      replicas = range(REPLICAS)
    rows = [(step, slice(r * per_replica, (r + 1) * per_replica))
            for step in range(first_step, TRAIN_STEPS) for r in replicas]
    return tf.data.Dataset.from_tensor_slices((
        np.stack([images[step, part] for step, part in rows]),
        np.stack([labels[step, part] for step, part in rows])))

  return strategy.distribute_datasets_from_function(dataset_fn)


class Record(Callback):
  """Keeps every block's logs; optionally signals a step and hangs (one worker) there."""

  def __init__(self, out, hang_step, hang):
    self.logs, self.out, self.hang_step, self.hang = {}, out, hang_step, hang

  def on_block_end(self, trainer, step, logs):
    self.logs[step] = logs
    if step == self.hang_step:
      temporary = f'{self.out}.tmp'
      with open(temporary, 'w', encoding='utf-8') as f:
        json.dump(self.logs, f)
      os.rename(temporary, f'{self.out}.step{step}')  # complete when visible
      while self.hang:
        time.sleep(1)


def main(kind, out, model_dir, init_prefix, hang_step=None):
  if kind == 'mirrored':
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS)
    strategy = tf.distribute.MirroredStrategy([f'/cpu:{i}' for i in range(REPLICAS)])
    worker = 0
  else:
    strategy = build_strategy(CONFIG)
    assert isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy), strategy
    worker = json.loads(os.environ['TF_CONFIG'])['task']['index']
  task = SimCLRTask(CONFIG.replace(checkpoint=init_prefix), NUM_CLASSES, strategy)
  if kind == 'mirrored':
    tf.train.Checkpoint(model=task.model).write(init_prefix)
  task.build_optimizer(NUM_TRAIN_EXAMPLES)
  record = Record(out, None if hang_step is None else int(hang_step), hang=worker == 1)
  trainer = Trainer(task, model_dir, default_callbacks(task.config) + [record])
  trainer.restore()
  first_step = trainer.step
  trainer.fit(replica_batches(strategy, first_step), TRAIN_STEPS, steps_per_loop=1)
  weights = {key: variable.numpy()
             for key, variable in ckpt_lib.object_keys(model=task.model).items()}
  np.savez(out, first_step=first_step, last_step=trainer.step, pid=os.getpid(),
           logs=json.dumps(record.logs), **{f'weight:{k}': v for k, v in weights.items()})


if __name__ == '__main__':
  main(*sys.argv[1:])
