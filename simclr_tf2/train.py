"""Training and evaluation under tf.distribute, with the reference's semantics and its defects
fixed: exact stop at train_steps (K8), steps_per_loop >= 1 (K21), strict restores (K15/K27), a
working eval mode (K9), an export after every evaluation (K10), a divergence guard. K-numbers:
docs/differences.md.

Public pieces, from low to high level:
  build_strategy(config)        the strategy run() uses when the caller passes none
  is_chief(strategy)            whether this process writes into model_dir (multi-worker)
  Trainer(task, model_dir)      the loop around a SimCLRTask: restore, blocks, callbacks, save
  Evaluator(task, model_dir)    evaluates checkpoints with the task's eval_step, writes results
  run(config, strategy) -> RunResult   what the `simclr-tf2` command does for one --mode
"""

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from typing import Callable, Iterable, Mapping, Optional, Sequence

import tensorflow as tf
import tf_keras as keras

from simclr_tf2 import checkpoint as ckpt_lib
from simclr_tf2.callbacks import (Callback, CheckpointSaver, DivergenceGuard, ProgressLogger,
                                  ScalarSummaries, format_metrics)
from simclr_tf2.config import Config
from simclr_tf2.data import build_distributed_dataset, get_source
from simclr_tf2.errors import TrainingError, one_line
from simclr_tf2.task import SimCLRTask

EVAL_POLL_SECONDS = 15
MAX_SLURM_TASKS_PER_NODE = 1024  # on CPU nodes (see slurm_cluster_resolver)
_STRATEGIES = {}  # build_strategy's per-process strategies, by kind


def write_json(path, value):
  """Writes JSON atomically: readers never see a half-written file."""
  tf.io.gfile.makedirs(os.path.dirname(path) or '.')
  temporary = f'{path}.tmp-{os.getpid()}'
  with tf.io.gfile.GFile(temporary, 'w') as f:
    json.dump(value, f, indent=2, sort_keys=True)
  tf.io.gfile.rename(temporary, path, overwrite=True)


def strategy_kind(config: Config, tf_config: Optional[str],
                  environ: Optional[Mapping[str, str]] = None) -> str:
  """'tpu', 'multi_worker' (a TF_CONFIG cluster of several workers), 'slurm' (no TF_CONFIG, in
  a SLURM job step of several tasks, i.e. under `srun`) or 'mirrored'.

  `environ`: the process environment (default: none, i.e. no SLURM).
  """
  if config.use_tpu:
    return 'tpu'
  if tf_config:
    cluster = json.loads(tf_config).get('cluster', {})
    multi_worker = len(cluster.get('worker', [])) + len(cluster.get('chief', [])) > 1
    return 'multi_worker' if multi_worker else 'mirrored'
  environ = environ or {}
  if 'SLURM_PROCID' in environ and int(environ.get('SLURM_STEP_NUM_TASKS', '1')) > 1:
    return 'slurm'
  return 'mirrored'


def slurm_cluster_resolver() -> tf.distribute.cluster_resolver.SlurmClusterResolver:
  """The cluster of this SLURM job step: one worker per task, ports 8888, 8889, ... per node.

  On GPU nodes TensorFlow shares each node's GPUs out among its tasks (it sets
  CUDA_VISIBLE_DEVICES). It cannot count zero GPUs (no task would get an address), so on CPU
  nodes (CUDA_VISIBLE_DEVICES empty, or unset without nvidia-smi) each task gets a placeholder
  GPU id that is never applied.
  """
  visible = os.environ.get('CUDA_VISIBLE_DEVICES')
  if visible or (visible is None and shutil.which('nvidia-smi')):
    return tf.distribute.cluster_resolver.SlurmClusterResolver()
  return tf.distribute.cluster_resolver.SlurmClusterResolver(
      gpus_per_node=MAX_SLURM_TASKS_PER_NODE, gpus_per_task=1, auto_set_gpu=False)


def build_strategy(config: Config):
  """TPUStrategy, MultiWorkerMirroredStrategy (TF_CONFIG with several workers, or a SLURM job
  step of several tasks) or Mirrored; see strategy_kind.

  One Mirrored strategy per process: a second one reuses the first one's collective instance
  keys and its all-reduces (sync BN) then fail, e.g. on a second run() in a notebook. Pass your
  own strategy to run() / SimCLRTask to use another one.
  """
  if config.use_tpu:
    try:
      resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
          tpu=config.tpu_name or config.master, zone=config.tpu_zone, project=config.gcp_project)
      tf.config.experimental_connect_to_cluster(resolver)
      topology = tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, OSError, tf.errors.OpError) as error:
      raise TrainingError(f'no TPU reachable ({one_line(error)}); '
                          'pass --use_tpu=false to train on GPUs or the CPU') from None
    logging.info('TPU topology: %d tasks, %d TPUs per task', topology.num_tasks,
                 topology.num_tpus_per_task)
    return tf.distribute.TPUStrategy(resolver)
  kind = strategy_kind(config, os.environ.get('TF_CONFIG'), os.environ)
  if kind not in _STRATEGIES:
    if kind == 'slurm':
      _STRATEGIES[kind] = tf.distribute.MultiWorkerMirroredStrategy(
          cluster_resolver=slurm_cluster_resolver())
    elif kind == 'multi_worker':
      _STRATEGIES[kind] = tf.distribute.MultiWorkerMirroredStrategy()
    else:
      _STRATEGIES[kind] = tf.distribute.MirroredStrategy()
  strategy = _STRATEGIES[kind]
  logging.info('Running on %d replica(s) with %s', strategy.num_replicas_in_sync,
               type(strategy).__name__)
  return strategy


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this process writes model_dir's checkpoints, results and exports: always, except
  on the non-chief workers of a multi-worker strategy."""
  return strategy.extended.should_checkpoint


def summary_writer_for(strategy: tf.distribute.Strategy, model_dir: str):
  """model_dir's TensorBoard writer on the chief, a writer that writes nothing elsewhere."""
  if strategy.extended.should_save_summary:
    return tf.summary.create_file_writer(model_dir)
  return tf.summary.create_noop_writer()


@contextlib.contextmanager
def scratch_dir(strategy: tf.distribute.Strategy, model_dir: str):
  """model_dir on the chief; elsewhere a temporary directory, deleted on exit.

  Every worker must run each save (saving can read variables with collective ops), but only
  the chief's may land in model_dir.
  """
  if is_chief(strategy):
    yield model_dir
    return
  directory = tempfile.mkdtemp(prefix='simclr_worker_')
  try:
    yield directory
  finally:
    shutil.rmtree(directory, ignore_errors=True)


def distributed_dataset(config: Config, source, strategy, is_training: bool):
  """The per-replica training (augmented, repeated) or evaluation pipeline of a config."""
  return build_distributed_dataset(
      source, config.train_batch_size if is_training else config.eval_batch_size,
      is_training, strategy,
      split=config.train_split if is_training else config.eval_split,
      train_mode=config.train_mode, image_size=config.image_size,
      color_jitter_strength=config.color_jitter_strength if is_training else 0.,
      cache_dataset=config.cache_dataset, seed=config.seed)


def default_callbacks(config: Config) -> list:
  """Guard first (nothing non-finite is saved), then checkpoint, summaries and progress."""
  return [DivergenceGuard(), CheckpointSaver(), ScalarSummaries(),
          ProgressLogger(config.train_batch_size)]


# --- training ------------------------------------------------------------------------------------

class Trainer:
  """Runs a SimCLRTask's train_step in blocks of steps inside one tf.function per block.

  Owns the checkpoints of `model_dir` (`ckpt-<step>`, official layout) and its summary writer;
  on a non-chief worker of a multi-worker strategy it writes neither there (see scratch_dir).
  `fit()` resumes from the newest checkpoint of model_dir, else initialises the model from
  `config.checkpoint` (when set), then trains to exactly `train_steps`.
  """

  def __init__(self, task: SimCLRTask, model_dir: str,
               callbacks: Optional[Sequence[Callback]] = None):
    if task.optimizer is None:
      raise ValueError('call task.build_optimizer(num_train_examples) before Trainer(task, ...)')
    self.task = task
    self.model_dir = model_dir
    self.callbacks = list(default_callbacks(task.config) if callbacks is None else callbacks)
    self.train_steps = None
    self.is_chief = is_chief(task.strategy)
    tf.io.gfile.makedirs(model_dir)
    with task.strategy.scope():
      self.checkpoint = task.checkpoint()
    self.checkpoint_manager = None
    if self.is_chief:
      self.checkpoint_manager = self._checkpoint_manager(model_dir)
    self._summary_writer = None
    self._restored = False
    self._train_loop = None
    self._steps_per_loop = 1

  @property
  def summary_writer(self):
    """The TensorBoard writer of model_dir, created on first use (a failed restore leaves no
    event file behind)."""
    if self._summary_writer is None:
      self._summary_writer = summary_writer_for(self.task.strategy, self.model_dir)
    return self._summary_writer

  @property
  def step(self) -> int:
    return int(self.task.global_step.numpy())

  @property
  def latest_checkpoint(self) -> Optional[str]:
    """The newest checkpoint of model_dir (every worker resumes from the chief's)."""
    if self.is_chief:
      return self.checkpoint_manager.latest_checkpoint
    return tf.train.latest_checkpoint(self.model_dir)

  def restore(self) -> Optional[str]:
    """Resumes model, step and optimizer from model_dir, else loads `config.checkpoint` into
    the model only (zeroing the supervised head if asked). Returns the path used, or None."""
    self._restored = True
    config, model = self.task.config, self.task.model
    with self.task.strategy.scope():
      if self.latest_checkpoint:
        ckpt_lib.restore_training_state(self.checkpoint, model, self.latest_checkpoint)
        logging.info('Resumed from %s', self.latest_checkpoint)
        return self.latest_checkpoint
      if not config.checkpoint:
        return None
      prefix, _ = ckpt_lib.restore_initial_weights(model, config.checkpoint)
      logging.info('Initialised the model from %s', prefix)
      if config.zero_init_logits_layer and model.has_supervised_head:  # K5
        for variable in model.supervised_head.trainable_weights:
          variable.assign(tf.zeros_like(variable))
        logging.info('Zero-initialised the supervised head.')
      return prefix

  def save_checkpoint(self, step: int) -> str:
    if self.is_chief:
      return self.checkpoint_manager.save(checkpoint_number=step)
    with scratch_dir(self.task.strategy, self.model_dir) as directory:
      self._checkpoint_manager(directory).save(checkpoint_number=step)
    return self.latest_checkpoint

  def _checkpoint_manager(self, directory):
    with self.task.strategy.scope():
      return tf.train.CheckpointManager(self.checkpoint, directory,
                                        max_to_keep=self.task.config.keep_checkpoint_max)

  def train_blocks(self, iterator, num_steps: int) -> None:
    """Runs `num_steps` training steps on `iterator` in one call of the compiled loop."""
    if self._train_loop is None:
      self._train_loop = self._build_train_loop()
    with self.summary_writer.as_default():
      self._train_loop(iterator, tf.constant(num_steps, tf.int32))

  def fit(self, dataset, train_steps: int, steps_per_loop: int) -> Optional[str]:
    """Trains to exactly `train_steps` (no overshoot, K8); callbacks run after every block of
    `steps_per_loop` steps. Returns the latest checkpoint."""
    if steps_per_loop < 1:
      raise ValueError(f'steps_per_loop must be >= 1, got {steps_per_loop}')
    self.train_steps = train_steps
    if steps_per_loop != self._steps_per_loop:  # the compiled loop's image-summary period
      self._steps_per_loop, self._train_loop = steps_per_loop, None
    if not self._restored:
      self.restore()
    task = self.task
    iterator = iter(dataset)
    step = self.step
    for callback in self.callbacks:
      callback.on_train_begin(self)
    while step < train_steps:
      self.train_blocks(iterator, min(steps_per_loop, train_steps - step))
      step = self.step
      logs = task.train_metrics.results()
      # The schedule at the global step, i.e. the rate of the next update (as the reference).
      logs['learning_rate'] = float(task.schedule(step))
      for callback in self.callbacks:
        callback.on_block_end(self, step, logs)
      task.train_metrics.reset()
    for callback in self.callbacks:
      callback.on_train_end(self, step)
    logging.info('Training complete: step %d of %d.', step, train_steps)
    return self.latest_checkpoint

  def _build_train_loop(self):
    task, strategy = self.task, self.task.strategy
    steps_per_loop = self._steps_per_loop

    def step_with_image_summary(images, labels):
      # The first view of the block's last batch, like the reference's image summary.
      with tf.summary.record_if(tf.equal((task.global_step + 1) % steps_per_loop, 0)):
        tf.summary.image('image', images[:, :, :, :3], step=task.global_step + 1)
      task.train_step(images, labels)

    @tf.function
    def train_loop(iterator, num_steps):
      for _ in tf.range(num_steps):
        with tf.name_scope(''):  # keep `while/` out of names of any variable created here
          images, labels = next(iterator)
          strategy.run(step_with_image_summary, (images, labels))

    return train_loop


# --- evaluation ----------------------------------------------------------------------------------

class Evaluator:
  """Evaluates checkpoints with the task's eval_step; writes summaries, result JSON files and
  (optionally) a SavedModel of every evaluated checkpoint."""

  def __init__(self, task: SimCLRTask, model_dir: str, dataset_fn: Callable[[], Iterable],
               eval_steps: int, export: bool = True):
    if not task.can_evaluate:
      raise ValueError('nothing to evaluate: the model has no supervised head (use '
                       'train_mode=finetune or --lineareval_while_pretraining=true)')
    self.task = task
    self.model_dir = model_dir
    self.dataset_fn = dataset_fn
    self.eval_steps = eval_steps
    self.export = export
    self.saved_model = None
    strategy = task.strategy

    @tf.function
    def eval_one_batch(iterator):
      strategy.run(task.eval_step, next(iterator))

    self._eval_one_batch = eval_one_batch

  def evaluate(self, checkpoint_path: str) -> dict:
    """Top-1/top-5 of the supervised head on `eval_steps` batches of the eval split."""
    task = self.task
    with task.strategy.scope():
      prefix, global_step = ckpt_lib.restore_for_evaluation(task.model, checkpoint_path)
    logging.info('Evaluating %s (step %d) on %d steps', prefix, global_step, self.eval_steps)
    task.eval_metrics.reset()
    iterator = iter(self.dataset_fn())
    for index in range(self.eval_steps):
      try:
        self._eval_one_batch(iterator)
      except tf.errors.OutOfRangeError:
        logging.warning('Eval split exhausted after %d of %d steps.', index, self.eval_steps)
        break
    result = task.eval_metrics.results()
    summary_writer = summary_writer_for(task.strategy, self.model_dir)
    with summary_writer.as_default():
      for tag, value in result.items():
        tf.summary.scalar(tag, value, step=global_step)
    summary_writer.flush()
    result['global_step'] = float(global_step)  # a float, like the reference (K28)
    logging.info('Evaluation at step %d: %s', global_step, format_metrics(result))
    if is_chief(task.strategy):
      write_json(os.path.join(self.model_dir, f'result_{global_step}.json'), result)
      write_json(os.path.join(self.model_dir, 'result.json'), result)
    if self.export:
      self.saved_model = export_model(task, self.model_dir, global_step)
    return result

  def evaluate_continuously(self, train_steps: int, timeout: Optional[float]) -> Optional[dict]:
    """mode=eval: evaluates each new checkpoint until one reaches train_steps (K9 fixed)."""
    for path in tf.train.checkpoints_iterator(self.model_dir,
                                              min_interval_secs=EVAL_POLL_SECONDS,
                                              timeout=timeout):
      try:
        result = self.evaluate(path)
      except (tf.errors.NotFoundError, ckpt_lib.CheckpointError) as error:
        if tf.io.gfile.exists(path + '.index'):
          raise
        logging.warning('Checkpoint %s vanished before evaluation (%s); skipping.', path,
                        type(error).__name__)
        continue
      if result['global_step'] >= train_steps:
        logging.info('Eval complete: step %d >= train_steps %d.', result['global_step'],
                     train_steps)
        return result
    logging.warning('No new checkpoint within --eval_timeout=%s s; stopping.', timeout)
    return None


def export_model(task: SimCLRTask, model_dir: str, global_step: int) -> Optional[str]:
  """The task's model as SavedModel model_dir/saved_model/<global_step>; None on a non-chief
  worker, which exports into a deleted scratch directory (see scratch_dir)."""
  from simclr_tf2.export import export_for_step  # pylint: disable=import-outside-toplevel
  with scratch_dir(task.strategy, model_dir) as directory:
    path = export_for_step(task.model, directory, global_step, task.config.keep_hub_module_max)
  if not is_chief(task.strategy):
    return None
  logging.info('Exported SavedModel to %s', path)
  return path


# --- one run -------------------------------------------------------------------------------------

@dataclasses.dataclass
class RunResult:
  """What run() produced: the last evaluation's metrics (None when nothing was evaluated), the
  last checkpoint and the SavedModel exported from it."""
  model_dir: str
  metrics: Optional[dict] = None
  checkpoint: Optional[str] = None
  saved_model: Optional[str] = None


def run(config: Config, strategy: Optional[tf.distribute.Strategy] = None,
        callbacks: Optional[Sequence[Callback]] = None) -> RunResult:
  """Runs `config.mode` (train, eval, train_then_eval) in `config.model_dir`.

  `strategy`: the tf.distribute strategy to run under (default: build_strategy(config)).
  `callbacks`: the Trainer's callbacks (default: default_callbacks(config)).
  """
  config.validate()
  if not config.model_dir:
    raise ValueError('--model_dir is required')
  if config.seed is not None:
    keras.utils.set_random_seed(config.seed)
  source = get_source(config.dataset, config.data_dir, config.skip_corrupt_images,
                      config.image_size)
  num_train_examples = source.num_examples(config.train_split)
  train_steps = config.total_train_steps(num_train_examples)
  strategy = strategy or build_strategy(config)
  task = SimCLRTask(config, source.num_classes, strategy)
  result = RunResult(model_dir=config.model_dir)

  def evaluator():
    eval_steps = config.total_eval_steps(source.num_examples(config.eval_split))
    return Evaluator(task, config.model_dir,
                     lambda: distributed_dataset(config, source, strategy, is_training=False),
                     eval_steps)

  if config.mode == 'eval':
    if not task.can_evaluate:
      raise ValueError('mode=eval needs a supervised head: use train_mode=finetune or '
                       '--lineareval_while_pretraining=true')
    evaluation = evaluator()
    result.metrics = evaluation.evaluate_continuously(train_steps, config.eval_timeout)
    result.saved_model = evaluation.saved_model
    return result

  steps_per_loop = config.steps_per_loop(num_train_examples)
  logging.info('# train examples: %d, # train steps: %d, steps per loop: %d',
               num_train_examples, train_steps, steps_per_loop)
  if config.warmup_steps(num_train_examples) >= train_steps:
    logging.warning('Warm-up does not end before training does (%d steps): the learning rate '
                    'never reaches its peak (K22).', train_steps)
  task.build_optimizer(num_train_examples)
  if is_chief(strategy):
    write_json(os.path.join(config.model_dir, 'config.json'), config.to_dict())
  trainer = Trainer(task, config.model_dir, callbacks)
  result.checkpoint = trainer.fit(distributed_dataset(config, source, strategy, is_training=True),
                                  train_steps, steps_per_loop)
  if config.mode == 'train_then_eval' and task.can_evaluate:
    evaluation = evaluator()
    result.metrics = evaluation.evaluate(result.checkpoint)
    result.saved_model = evaluation.saved_model
  else:  # the reference exported only after evaluations (K10)
    result.saved_model = export_model(task, config.model_dir, trainer.step)
  return result
