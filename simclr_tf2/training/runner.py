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
import time
from typing import Callable, Iterable, Mapping, Optional, Sequence

import tensorflow as tf
import tf_keras as keras

from simclr_tf2 import checkpoint as ckpt_lib
from simclr_tf2 import model_dir as model_dir_lib
from simclr_tf2 import console
from simclr_tf2.callbacks import (LOSS_SCALE_TAG, Callback, CheckpointSaver, DivergenceGuard,
                                  ProgressBar, ProgressLogger, ScalarSummaries, format_metrics)
from simclr_tf2.config import Config
from simclr_tf2.data import build_distributed_dataset, corrupt_image_errors, get_source
from simclr_tf2.errors import ConfigError, TrainingError, one_line, os_errors
from simclr_tf2.task import SimCLRTask

EVAL_POLL_SECONDS = 15
EVAL_SUBDIR = 'eval'  # mode=eval's summaries: a reader writes nothing the training run owns
MAX_SLURM_TASKS_PER_NODE = 1024  # on CPU nodes (see slurm_cluster_resolver)
_STRATEGIES = {}  # build_strategy's per-process strategies, by kind


def write_json(path, value):
  """Writes JSON atomically: readers never see a half-written file."""
  temporary = f'{path}.tmp-{os.getpid()}'
  with os_errors('write', path):
    tf.io.gfile.makedirs(os.path.dirname(path) or '.')
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


def distributed_dataset(config: Config, source, strategy, is_training: bool, start_step: int = 0):
  """The per-replica training (augmented, repeated) or evaluation pipeline of a config.

  `start_step`: the global step training resumes from; with a seed the stream then continues
  exactly where the interrupted run was (data.build_input_fn).
  """
  return build_distributed_dataset(
      source, config.train_batch_size if is_training else config.eval_batch_size,
      is_training, strategy,
      split=config.train_split if is_training else config.eval_split,
      train_mode=config.train_mode, image_size=config.image_size,
      color_jitter_strength=config.color_jitter_strength if is_training else 0.,
      cache_dataset=config.cache_dataset, seed=config.seed,
      start_step=start_step if is_training else 0, crop_min_area=config.crop_min_area,
      horizontal_flip=config.horizontal_flip)


def default_callbacks(config: Config, source=None, progress_bar: bool = False) -> list:
  """Guard first (nothing non-finite is saved), then checkpoint, summaries, the kNN monitor
  (`config.knn_monitor_steps` > 0; `source`: the run's data source, else built from config) and
  progress: log lines, plus the console's progress bar if `progress_bar`."""
  callbacks = [DivergenceGuard(), CheckpointSaver(), ScalarSummaries()]
  if config.knn_monitor_steps:
    from simclr_tf2.probes import KnnMonitor  # pylint: disable=import-outside-toplevel
    source = source or get_source(config.dataset, config.data_dir, config.skip_corrupt_images,
                                  config.image_size)
    callbacks.append(KnnMonitor.from_config(config, source))
  callbacks.append(ProgressLogger(config.train_batch_size))
  if progress_bar:
    callbacks.append(ProgressBar(config.train_batch_size))
  return callbacks


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
        ckpt_lib.check_optimizer_matches(self.latest_checkpoint, config.optimizer)
        ckpt_lib.restore_training_state(self.checkpoint, model, self.latest_checkpoint,
                                        config.allow_non_finite_checkpoint)
        logging.info('Resumed from %s', self.latest_checkpoint)
        return self.latest_checkpoint
      if not config.checkpoint:
        return None
      prefix, _ = ckpt_lib.restore_initial_weights(model, config.checkpoint,
                                                   config.allow_non_finite_checkpoint)
      logging.info('Initialised the model from %s', prefix)
      if config.zero_init_logits_layer and model.has_supervised_head:  # K5
        for variable in model.supervised_head.trainable_weights:
          variable.assign(tf.zeros_like(variable))
        logging.info('Zero-initialised the supervised head.')
      return prefix

  def save_checkpoint(self, step: int) -> str:
    """Saves ckpt-<step>; refuses (TrainingError) variables holding NaN/inf: the last update
    of a block can diverge after the block's losses were computed. A non-chief worker saves
    into a scratch directory (every worker must take part in a save)."""
    ckpt_lib.assert_all_finite(self.task.model.variables, step, self.latest_checkpoint)
    if self.is_chief:
      with os_errors('save checkpoint', os.path.join(self.model_dir, f'ckpt-{step}')):
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
      loss_scale = task.loss_scale
      if loss_scale is not None:
        logs[LOSS_SCALE_TAG] = loss_scale
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
               eval_steps: int, export: bool = True, summary_dir: Optional[str] = None,
               progress_bar: bool = False):
    if not task.can_evaluate:
      raise ValueError('nothing to evaluate: the model has no supervised head (use '
                       'train_mode=finetune or --lineareval_while_pretraining=true)')
    self.task = task
    self.model_dir = model_dir
    self.dataset_fn = dataset_fn
    self.eval_steps = eval_steps
    self.export = export
    self.summary_dir = summary_dir or model_dir
    self.progress_bar = progress_bar  # the console's progress line (console.Progress)
    self.saved_model = None
    self.evaluated = []  # checkpoint prefixes evaluated, in order
    self.skipped = []  # (prefix, reason) of checkpoints that could not be evaluated
    strategy = task.strategy

    @tf.function
    def eval_one_batch(iterator):
      strategy.run(task.eval_step, next(iterator))

    self._eval_one_batch = eval_one_batch

  def evaluate(self, checkpoint_path: str) -> dict:
    """Top-1/top-5 of the supervised head on `eval_steps` batches of the eval split."""
    task = self.task
    with task.strategy.scope():
      prefix, global_step = ckpt_lib.restore_for_evaluation(
          task.model, checkpoint_path, task.config.allow_non_finite_checkpoint)
    logging.info('Evaluating %s (step %d) on %d steps', prefix, global_step, self.eval_steps)
    task.eval_metrics.reset()
    iterator = iter(self.dataset_fn())
    progress = None
    if self.progress_bar:
      progress = console.Progress(self.eval_steps, 'eval',
                                  images_per_step=task.config.eval_batch_size)
    # On a pipe each update is a line: about ten of them.
    update_every = 1 if progress is None or progress.interactive else max(self.eval_steps // 10, 1)
    for index in range(self.eval_steps):
      try:
        self._eval_one_batch(iterator)
      except tf.errors.OutOfRangeError:
        logging.warning('Eval split exhausted after %d of %d steps.', index, self.eval_steps)
        break
      if progress and ((index + 1) % update_every == 0 or index + 1 == self.eval_steps):
        progress.update(index + 1, **{'top-1': float(task.eval_metrics.top_1_accuracy.result())})
    if progress:
      progress.close()
    result = task.eval_metrics.results()
    summary_writer = summary_writer_for(task.strategy, self.summary_dir)
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

  def evaluate_continuously(self, train_steps: int, timeout: Optional[float],
                            poll_seconds: float = EVAL_POLL_SECONDS) -> Optional[dict]:
    """mode=eval: evaluates every checkpoint that exists or appears, oldest first, until one
    reaches train_steps or none appears for `timeout` seconds (K9 fixed).

    Checkpoints deleted (keep_checkpoint_max) before their turn are skipped and listed.
    """
    result, last_step, waited = None, -1, 0.
    while True:
      pending = [(step, prefix) for step, prefix in _numbered_checkpoints(self.model_dir)
                 if step > last_step]
      if not pending:
        if timeout is not None and waited >= timeout:
          logging.warning('No new checkpoint within --eval_timeout=%s s; stopping.', timeout)
          break
        time.sleep(poll_seconds)
        waited += poll_seconds
        continue
      waited = 0.
      for step, prefix in pending:
        last_step = step
        try:
          result = self.evaluate(prefix)
        except (tf.errors.NotFoundError, ckpt_lib.CheckpointError) as error:
          if tf.io.gfile.exists(prefix + '.index'):
            raise
          logging.warning('Checkpoint %s was deleted before evaluation (%s, e.g. by '
                          '--keep_checkpoint_max of the training run); skipping it.', prefix,
                          type(error).__name__)
          self.skipped.append((prefix, 'deleted before evaluation'))
          continue
        self.evaluated.append(prefix)
        if step >= train_steps:
          logging.info('Eval complete: step %d >= train_steps %d.', step, train_steps)
          self._log_summary()
          return result
    self._log_summary()
    return result

  def _log_summary(self):
    logging.info('Evaluated %d checkpoint(s)%s.', len(self.evaluated),
                 f'; skipped {", ".join(os.path.basename(p) for p, _ in self.skipped)} (deleted '
                 'before evaluation)' if self.skipped else '')


def _numbered_checkpoints(model_dir: str):
  """[(step, prefix)] of the `ckpt-<step>` checkpoints in model_dir, by step."""
  found = []
  for index_file in tf.io.gfile.glob(os.path.join(model_dir, 'ckpt-*.index')):
    name = os.path.basename(index_file)[:-len('.index')]
    if name[len('ckpt-'):].isdigit():
      found.append((int(name[len('ckpt-'):]), index_file[:-len('.index')]))
  return sorted(found)


def export_model(task: SimCLRTask, model_dir: str, global_step: int) -> Optional[str]:
  """The task's model as SavedModel model_dir/saved_model/<global_step>; None on a non-chief
  worker, which exports into a deleted scratch directory (see scratch_dir)."""
  from simclr_tf2.export import export_for_step  # pylint: disable=import-outside-toplevel
  ckpt_lib.assert_all_finite(task.model.variables, global_step, None, 'exported')
  with scratch_dir(task.strategy, model_dir) as directory:
    with os_errors('export SavedModel to', os.path.join(directory, 'saved_model',
                                                          str(global_step))):
      path = export_for_step(task.model, directory, global_step,
                             task.config.keep_hub_module_max)
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


def _check_before_writing(config: Config, source) -> int:
  """Everything knowable before anything is written; returns the number of training examples.

  The splits the mode uses exist and are non-empty, model_dir is (or can become) a writable
  directory, its checkpoint state file parses, and a `--checkpoint` to start from exists.
  """
  if not config.model_dir:
    raise ConfigError('--model_dir is required')
  model_dir_lib.check_model_dir(config.model_dir)
  num_train_examples = source.num_examples(config.train_split)
  if config.mode != 'train':  # also read at the start of train_then_eval, not after training
    source.num_examples(config.eval_split)
  if num_train_examples == 0:
    raise ValueError(f'--train_split={config.train_split} has no examples')
  state = model_dir_lib.read_checkpoint_state(config.model_dir)
  if state is None and config.checkpoint and config.mode != 'eval':
    ckpt_lib.resolve_checkpoint(config.checkpoint)
  if state is not None and config.mode != 'eval':
    ckpt_lib.check_optimizer_matches(state.latest, config.optimizer)
  return num_train_examples


@corrupt_image_errors()
def run(config: Config, strategy: Optional[tf.distribute.Strategy] = None,
        callbacks: Optional[Sequence[Callback]] = None,
        flag_values: Optional[dict] = None, log_file: bool = False,
        eval_progress_bar: bool = False) -> RunResult:
  """Runs `config.mode` (train, eval, train_then_eval) in `config.model_dir`.

  `strategy`: the tf.distribute strategy to run under (default: build_strategy(config)).
  `callbacks`: the Trainer's callbacks (default: default_callbacks(config, source)).
  `flag_values`: the command line's flags, written as flags.json (eval_flags.json for mode=eval).
  `log_file`: also append the process' log (simclr_tf2.console) to model_dir/log.txt
  (model_dir/eval/log.txt for mode=eval) from the moment the run starts writing there.
  `eval_progress_bar`: the console's progress line during evaluations (training's is a
  callback, see default_callbacks).

  Everything knowable is checked before anything is written. Training (train, train_then_eval)
  holds the model_dir's writer lock and removes leftovers of interrupted saves at start-up and
  after a failure; mode=eval is a reader: it takes no lock and writes its summaries to
  model_dir/eval.
  """
  config.validate()
  if config.seed is not None:
    keras.utils.set_random_seed(config.seed)
  source = get_source(config.dataset, config.data_dir, config.skip_corrupt_images,
                      config.image_size)
  num_train_examples = _check_before_writing(config, source)
  train_steps = config.total_train_steps(num_train_examples)
  strategy = strategy or build_strategy(config)
  task = SimCLRTask(config, source.num_classes, strategy)
  if config.mode == 'eval' and not task.can_evaluate:
    raise ValueError('mode=eval needs a supervised head: use train_mode=finetune or '
                     '--lineareval_while_pretraining=true')
  result = RunResult(model_dir=config.model_dir)
  if callbacks is None:
    callbacks = default_callbacks(config, source)

  def evaluator(summary_dir=None):
    eval_steps = config.total_eval_steps(source.num_examples(config.eval_split))
    return Evaluator(task, config.model_dir,
                     lambda: distributed_dataset(config, source, strategy, is_training=False),
                     eval_steps, summary_dir=summary_dir, progress_bar=eval_progress_bar)

  if config.mode == 'eval':
    if flag_values is not None:
      write_json(os.path.join(config.model_dir, 'eval_flags.json'), flag_values)
    if log_file:
      console.setup_log_file(os.path.join(config.model_dir, EVAL_SUBDIR, console.LOG_FILE_NAME))
    evaluation = evaluator(os.path.join(config.model_dir, EVAL_SUBDIR))
    result.metrics = evaluation.evaluate_continuously(train_steps, config.eval_timeout)
    result.saved_model = evaluation.saved_model
    return result

  if not is_chief(strategy):  # the chief holds the lock and owns model_dir's files
    _train(config, source, strategy, task, callbacks, flag_values, num_train_examples,
           train_steps, result, evaluator, log_file=False)
    return result
  created = not tf.io.gfile.exists(config.model_dir)
  model_dir_lib.prepare_model_dir(config.model_dir)
  try:
    with model_dir_lib.ModelDirLock(config.model_dir):
      model_dir_lib.remove_stale_temporaries(config.model_dir)
      try:
        _train(config, source, strategy, task, callbacks, flag_values, num_train_examples,
               train_steps, result, evaluator, log_file)
      except BaseException:
        model_dir_lib.remove_stale_temporaries(config.model_dir)
        raise
  except BaseException:
    if created and not tf.io.gfile.listdir(config.model_dir):
      tf.io.gfile.rmtree(config.model_dir)  # a run that failed before writing leaves nothing
    raise
  return result


def _train(config, source, strategy, task, callbacks, flag_values, num_train_examples,
           train_steps, result, evaluator, log_file):
  """The writer's part of run(): restore, write settings, train, then evaluate or export."""
  steps_per_loop = config.steps_per_loop(num_train_examples)
  logging.info('# train examples: %d, # train steps: %d, steps per loop: %d',
               num_train_examples, train_steps, steps_per_loop)
  if config.warmup_steps(num_train_examples) >= train_steps:
    logging.warning('Warm-up does not end before training does (%d steps): the learning rate '
                    'never reaches its peak (K22).', train_steps)
  task.build_optimizer(num_train_examples)
  trainer = Trainer(task, config.model_dir, callbacks)
  trainer.restore()  # before writing anything: a checkpoint that does not fit is an error
  if log_file:
    console.setup_log_file(os.path.join(config.model_dir, console.LOG_FILE_NAME))
  if is_chief(strategy):
    if flag_values is not None:
      write_json(os.path.join(config.model_dir, 'flags.json'), flag_values)
    write_json(os.path.join(config.model_dir, 'config.json'), config.to_dict())
  dataset = distributed_dataset(config, source, strategy, is_training=True,
                                start_step=trainer.step)
  result.checkpoint = trainer.fit(dataset, train_steps, steps_per_loop)
  if config.mode == 'train_then_eval' and task.can_evaluate:
    evaluation = evaluator()
    result.metrics = evaluation.evaluate(result.checkpoint)
    result.saved_model = evaluation.saved_model
  else:  # the reference exported only after evaluations (K10)
    result.saved_model = export_model(task, config.model_dir, trainer.step)
