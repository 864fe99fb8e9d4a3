"""One `--mode` of the `simclr-tf2` command as one downward pass:

    strategy -> data source -> checks before writing -> task -> trainer -> evaluator -> export

`run(config)` is what the command does; each stage is a plain call, so a user's own script can
stop at any of them (docs/api.md). The reference's defects fixed here: exact stop at train_steps
(K8), steps_per_loop >= 1 (K21), strict restores (K15/K27), a working eval mode (K9), an export
after every evaluation (K10), a divergence guard. K-numbers: docs/differences.md.
"""

import contextlib
import dataclasses
import logging
import os
from typing import Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras as keras

from simclr_tf2 import console
from simclr_tf2 import model_dir as model_dir_lib
from simclr_tf2.config import Config
from simclr_tf2.data import corrupt_image_errors, distributed_dataset, get_source
from simclr_tf2.data.label_subset import label_subset_source, write_label_subset
from simclr_tf2.distribute import build_strategy, is_chief
from simclr_tf2.errors import ConfigError
from simclr_tf2.model_dir import FLAGS_FILE, write_json
from simclr_tf2.network import checkpoint as ckpt_lib
from simclr_tf2.training.callbacks import Callback
from simclr_tf2.training.run_settings import Changes, check_resumable, record_settings
from simclr_tf2.training.distill import DistillationTask, load_teacher
from simclr_tf2.training.evaluator import Evaluator, export_model
from simclr_tf2.training.task import SimCLRTask
from simclr_tf2.training.trainer import Trainer, default_callbacks

EVAL_SUBDIR = 'eval'  # everything mode=eval writes: nothing the training run owns


@dataclasses.dataclass
class RunResult:
  """What run() produced: the last evaluation's metrics (None when nothing was evaluated), the
  last checkpoint and the SavedModel exported from it; `output_dir` is where the run wrote its
  results, log and summaries (model_dir, or model_dir/eval for mode=eval)."""
  model_dir: str
  metrics: Optional[dict] = None
  checkpoint: Optional[str] = None
  saved_model: Optional[str] = None
  output_dir: Optional[str] = None


def check_before_writing(config: Config, source, strategy: tf.distribute.Strategy
                         ) -> Tuple[int, Changes]:
  """Everything knowable before anything is written: returns the number of training examples
  and the settings a resumed run changes (run_settings.check_resumable).

  The splits the mode uses exist and are non-empty, both batch sizes divide among the
  replicas, micro_batch_size divides the per-replica training batch, model_dir is (or can
  become) a writable directory, its checkpoint state file parses, a resumed run keeps its model
  settings, and a `--checkpoint` to start from exists.
  """
  if not config.model_dir:
    raise ConfigError('--model_dir is required')
  replicas = strategy.num_replicas_in_sync
  batches = {'eval_batch_size': config.eval_batch_size}
  if config.mode != 'eval':
    batches['train_batch_size'] = config.train_batch_size
  for name, size in batches.items():
    if size % replicas:
      raise ConfigError(f'--{name}={size} is not divisible by the {replicas} replicas; use a '
                        f'multiple of {replicas}')
  micro = config.micro_batch_size
  per_replica = config.train_batch_size // replicas
  if micro and config.mode != 'eval' and (micro > per_replica or per_replica % micro):
    raise ConfigError(f'--micro_batch_size={micro} does not divide the per-replica batch of '
                      f'{per_replica} images (train_batch_size={config.train_batch_size} on '
                      f'{replicas} replicas)')
  model_dir_lib.check_model_dir(config.model_dir)
  num_train_examples = source.num_examples(config.train_split)
  if config.mode != 'train':  # also read at the start of train_then_eval, not after training
    source.num_examples(config.eval_split)
  if num_train_examples == 0:
    raise ValueError(f'--train_split={config.train_split} has no examples')
  state = model_dir_lib.read_checkpoint_state(config.model_dir)
  if config.checkpoint and (state is None or config.mode == 'eval'):
    ckpt_lib.resolve_checkpoint(config.checkpoint)
  changes = {}
  if state is not None and config.mode != 'eval':
    ckpt_lib.check_optimizer_matches(state.latest, config.optimizer)
    changes = check_resumable(config, config.model_dir)
  return num_train_examples, changes


def build_task(config: Config, source, strategy: tf.distribute.Strategy) -> SimCLRTask:
  """The task of `config.train_mode`. Distillation loads and checks its teacher here, before
  anything is written (a one-line TeacherError); mode=eval needs no teacher."""
  if config.train_mode == 'distill' and config.mode != 'eval':
    return DistillationTask(config, load_teacher(config, strategy, source), strategy)
  return SimCLRTask(config, source.num_classes, strategy)


def build_evaluator(config: Config, source, task: SimCLRTask, export: bool = True,
                    output_dir: Optional[str] = None, progress_bar: bool = False) -> Evaluator:
  """The Evaluator of a run: the whole eval split (or eval_steps batches) of `source`."""
  eval_steps = config.total_eval_steps(source.num_examples(config.eval_split))
  return Evaluator(task, config.model_dir,
                   lambda: distributed_dataset(config, source, task.strategy, is_training=False),
                   eval_steps, export=export, output_dir=output_dir, progress_bar=progress_bar)


@contextlib.contextmanager
def writing_output_dir(directory: str, strategy: tf.distribute.Strategy):
  """The chief holds the writer lock of the directory a run writes into (model_dir, or
  model_dir/eval for mode=eval) and tidies leftovers of interrupted saves at the start and
  after a failure; a run that fails before writing leaves no directory behind.
  Other workers write nothing there (their saves go to scratch directories)."""
  if not is_chief(strategy):
    yield
    return
  created = not tf.io.gfile.exists(directory)
  model_dir_lib.prepare_model_dir(directory)
  try:
    with model_dir_lib.ModelDirLock(directory):
      model_dir_lib.remove_stale_temporaries(directory)
      try:
        yield
      except BaseException:
        model_dir_lib.remove_stale_temporaries(directory)
        raise
  except BaseException:
    if created and not tf.io.gfile.listdir(directory):
      tf.io.gfile.rmtree(directory)
    raise


@corrupt_image_errors()
def run(config: Config, strategy: Optional[tf.distribute.Strategy] = None,
        callbacks: Optional[Sequence[Callback]] = None,
        flag_values: Optional[dict] = None, log_file: bool = False,
        eval_progress_bar: bool = False, export: Optional[bool] = None) -> RunResult:
  """Runs `config.mode` (train, eval, train_then_eval) in `config.model_dir`.

  `strategy`: the tf.distribute strategy to run under (default: build_strategy(config)).
  `callbacks`: the Trainer's callbacks (default: default_callbacks(config, source)).
  `flag_values`: the command line's flags, written as flags.json.
  `log_file`: also append the process' log (simclr_tf2.console) to log.txt from the moment the
  run starts writing.
  `eval_progress_bar`: the console's progress line during evaluations (training's is a
  callback, see default_callbacks).
  `export`: write a SavedModel after training / every evaluation (default:
  `config.export_saved_model`, true unless --export_saved_model=false).

  Everything knowable is checked before anything is written. Training (train, train_then_eval)
  holds the model_dir's writer lock. mode=eval reads model_dir's checkpoints (or only
  `config.checkpoint` when given: a checkpoint or a SavedModel) and writes everything (flags,
  log, summaries, results, exports) into model_dir/eval, whose lock it holds.
  """
  strategy = strategy or build_strategy(config)
  if export is None:
    export = config.export_saved_model
  if config.seed is not None:
    keras.utils.set_random_seed(config.seed)
  source = get_source(config.dataset, config.data_dir, config.skip_corrupt_images,
                      config.image_size)
  subset = None
  if config.mode != 'eval':  # --label_fraction: the train split's labeled subset
    source, subset = label_subset_source(config, source)
  num_train_examples, changes = check_before_writing(config, source, strategy)
  task = build_task(config, source, strategy)
  if config.mode == 'eval':
    return _evaluate_run(config, source, task, flag_values, log_file, eval_progress_bar, export)
  if callbacks is None:
    callbacks = default_callbacks(config, source)
  result = RunResult(model_dir=config.model_dir, output_dir=config.model_dir)
  train_steps = config.total_train_steps(num_train_examples)
  steps_per_loop = config.steps_per_loop(num_train_examples)
  logging.info('# train examples: %d, # train steps: %d, steps per loop: %d',
               num_train_examples, train_steps, steps_per_loop)
  if config.warmup_steps(num_train_examples) >= train_steps:
    logging.warning('Warm-up does not end before training does (%d steps): the learning rate '
                    'never reaches its peak (K22).', train_steps)
  with writing_output_dir(config.model_dir, strategy):
    task.build_optimizer(num_train_examples)
    trainer = Trainer(task, config.model_dir, callbacks)
    trainer.restore()  # before writing anything: a checkpoint that does not fit is an error
    if log_file and is_chief(strategy):
      console.setup_log_file(os.path.join(config.model_dir, console.LOG_FILE_NAME))
    if is_chief(strategy):
      record_settings(config, flag_values, changes, trainer.step)
      write_label_subset(config.model_dir, subset)
    dataset = distributed_dataset(config, source, strategy, is_training=True,
                                  start_step=trainer.step, train_steps=train_steps)
    result.checkpoint = trainer.fit(dataset, train_steps, steps_per_loop)
    if config.mode == 'train_then_eval' and task.can_evaluate:
      evaluator = build_evaluator(config, source, task, export, progress_bar=eval_progress_bar)
      result.metrics = evaluator.evaluate(result.checkpoint)
      result.saved_model = evaluator.saved_model
    elif export:  # the reference exported only after evaluations (K10)
      result.saved_model = export_model(task, config.model_dir, trainer.step)
  return result


def _evaluate_run(config, source, task, flag_values, log_file, progress_bar, export):
  """mode=eval: `config.checkpoint` once when given, else every checkpoint of model_dir as it
  appears, until train_steps (K9 fixed); everything written goes to model_dir/eval."""
  if not task.can_evaluate:
    raise ValueError('mode=eval needs a supervised head: use train_mode=finetune or '
                     '--lineareval_while_pretraining=true')
  eval_dir = os.path.join(config.model_dir, EVAL_SUBDIR)
  with writing_output_dir(eval_dir, task.strategy):
    chief = is_chief(task.strategy)
    if flag_values is not None and chief:
      write_json(os.path.join(eval_dir, FLAGS_FILE), flag_values)
    if log_file and chief:
      console.setup_log_file(os.path.join(eval_dir, console.LOG_FILE_NAME))
    evaluator = build_evaluator(config, source, task, export, output_dir=eval_dir,
                                progress_bar=progress_bar)
    if config.checkpoint:
      metrics = evaluator.evaluate(config.checkpoint)
    else:
      train_steps = config.total_train_steps(source.num_examples(config.train_split))
      metrics = evaluator.evaluate_continuously(train_steps, config.eval_timeout)
  return RunResult(model_dir=config.model_dir, metrics=metrics,
                   saved_model=evaluator.saved_model, output_dir=eval_dir)
