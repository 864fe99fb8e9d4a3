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
from typing import Optional, Sequence

import tensorflow as tf
import tf_keras as keras

from simclr_tf2 import console
from simclr_tf2 import model_dir as model_dir_lib
from simclr_tf2.config import Config
from simclr_tf2.data import corrupt_image_errors, distributed_dataset, get_source
from simclr_tf2.distribute import build_strategy, is_chief
from simclr_tf2.errors import ConfigError
from simclr_tf2.model_dir import write_json
from simclr_tf2.network import checkpoint as ckpt_lib
from simclr_tf2.training.callbacks import Callback
from simclr_tf2.training.evaluator import Evaluator, export_model
from simclr_tf2.training.task import SimCLRTask
from simclr_tf2.training.trainer import Trainer, default_callbacks

EVAL_SUBDIR = 'eval'  # mode=eval's summaries: a reader writes nothing the training run owns


@dataclasses.dataclass
class RunResult:
  """What run() produced: the last evaluation's metrics (None when nothing was evaluated), the
  last checkpoint and the SavedModel exported from it."""
  model_dir: str
  metrics: Optional[dict] = None
  checkpoint: Optional[str] = None
  saved_model: Optional[str] = None


def check_before_writing(config: Config, source, strategy: tf.distribute.Strategy) -> int:
  """Everything knowable before anything is written; returns the number of training examples.

  The splits the mode uses exist and are non-empty, both batch sizes divide among the
  replicas, micro_batch_size divides the per-replica training batch, model_dir is (or can
  become) a writable directory, its checkpoint state file parses, and a `--checkpoint` to start
  from exists.
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
  if state is None and config.checkpoint and config.mode != 'eval':
    ckpt_lib.resolve_checkpoint(config.checkpoint)
  if state is not None and config.mode != 'eval':
    ckpt_lib.check_optimizer_matches(state.latest, config.optimizer)
  return num_train_examples


def build_evaluator(config: Config, source, task: SimCLRTask, export: bool = True,
                    summary_dir: Optional[str] = None, progress_bar: bool = False) -> Evaluator:
  """The Evaluator of a run: the whole eval split (or eval_steps batches) of `source`."""
  eval_steps = config.total_eval_steps(source.num_examples(config.eval_split))
  return Evaluator(task, config.model_dir,
                   lambda: distributed_dataset(config, source, task.strategy, is_training=False),
                   eval_steps, export=export, summary_dir=summary_dir, progress_bar=progress_bar)


@contextlib.contextmanager
def writing_model_dir(config: Config, strategy: tf.distribute.Strategy):
  """The chief holds model_dir's writer lock and tidies leftovers of interrupted saves at the
  start and after a failure; a run that fails before writing leaves no directory behind. Other
  workers write nothing there (their saves go to scratch directories)."""
  if not is_chief(strategy):
    yield
    return
  created = not tf.io.gfile.exists(config.model_dir)
  model_dir_lib.prepare_model_dir(config.model_dir)
  try:
    with model_dir_lib.ModelDirLock(config.model_dir):
      model_dir_lib.remove_stale_temporaries(config.model_dir)
      try:
        yield
      except BaseException:
        model_dir_lib.remove_stale_temporaries(config.model_dir)
        raise
  except BaseException:
    if created and not tf.io.gfile.listdir(config.model_dir):
      tf.io.gfile.rmtree(config.model_dir)
    raise


def write_run_settings(config: Config, strategy, flag_values: Optional[dict]) -> None:
  """flags.json (the command line) and config.json (every setting) on the chief."""
  if not is_chief(strategy):
    return
  if flag_values is not None:
    write_json(os.path.join(config.model_dir, 'flags.json'), flag_values)
  write_json(os.path.join(config.model_dir, 'config.json'), config.to_dict())


@corrupt_image_errors()
def run(config: Config, strategy: Optional[tf.distribute.Strategy] = None,
        callbacks: Optional[Sequence[Callback]] = None,
        flag_values: Optional[dict] = None, log_file: bool = False,
        eval_progress_bar: bool = False, export: bool = True) -> RunResult:
  """Runs `config.mode` (train, eval, train_then_eval) in `config.model_dir`.

  `strategy`: the tf.distribute strategy to run under (default: build_strategy(config)).
  `callbacks`: the Trainer's callbacks (default: default_callbacks(config, source)).
  `flag_values`: the command line's flags, written as flags.json (eval_flags.json for mode=eval).
  `log_file`: also append the process' log (simclr_tf2.console) to model_dir/log.txt
  (model_dir/eval/log.txt for mode=eval) from the moment the run starts writing there.
  `eval_progress_bar`: the console's progress line during evaluations (training's is a
  callback, see default_callbacks).
  `export`: write a SavedModel after training / every evaluation (the command always does).

  Everything knowable is checked before anything is written. Training (train, train_then_eval)
  holds the model_dir's writer lock; mode=eval is a reader: it takes no lock and writes its
  summaries to model_dir/eval.
  """
  strategy = strategy or build_strategy(config)
  if config.seed is not None:
    keras.utils.set_random_seed(config.seed)
  source = get_source(config.dataset, config.data_dir, config.skip_corrupt_images,
                      config.image_size)
  num_train_examples = check_before_writing(config, source, strategy)
  task = SimCLRTask(config, source.num_classes, strategy)
  if config.mode == 'eval':
    return _evaluate_run(config, source, task, flag_values, log_file, eval_progress_bar, export)
  if callbacks is None:
    callbacks = default_callbacks(config, source)
  result = RunResult(model_dir=config.model_dir)
  train_steps = config.total_train_steps(num_train_examples)
  steps_per_loop = config.steps_per_loop(num_train_examples)
  logging.info('# train examples: %d, # train steps: %d, steps per loop: %d',
               num_train_examples, train_steps, steps_per_loop)
  if config.warmup_steps(num_train_examples) >= train_steps:
    logging.warning('Warm-up does not end before training does (%d steps): the learning rate '
                    'never reaches its peak (K22).', train_steps)
  with writing_model_dir(config, strategy):
    task.build_optimizer(num_train_examples)
    trainer = Trainer(task, config.model_dir, callbacks)
    trainer.restore()  # before writing anything: a checkpoint that does not fit is an error
    if log_file and is_chief(strategy):
      console.setup_log_file(os.path.join(config.model_dir, console.LOG_FILE_NAME))
    write_run_settings(config, strategy, flag_values)
    dataset = distributed_dataset(config, source, strategy, is_training=True,
                                  start_step=trainer.step)
    result.checkpoint = trainer.fit(dataset, train_steps, steps_per_loop)
    if config.mode == 'train_then_eval' and task.can_evaluate:
      evaluator = build_evaluator(config, source, task, export, progress_bar=eval_progress_bar)
      result.metrics = evaluator.evaluate(result.checkpoint)
      result.saved_model = evaluator.saved_model
    elif export:  # the reference exported only after evaluations (K10)
      result.saved_model = export_model(task, config.model_dir, trainer.step)
  return result


def _evaluate_run(config, source, task, flag_values, log_file, progress_bar, export):
  """mode=eval: every checkpoint of model_dir as it appears, until train_steps (K9 fixed)."""
  if not task.can_evaluate:
    raise ValueError('mode=eval needs a supervised head: use train_mode=finetune or '
                     '--lineareval_while_pretraining=true')
  if flag_values is not None:
    write_json(os.path.join(config.model_dir, 'eval_flags.json'), flag_values)
  if log_file:
    console.setup_log_file(os.path.join(config.model_dir, EVAL_SUBDIR, console.LOG_FILE_NAME))
  evaluator = build_evaluator(config, source, task, export,
                              summary_dir=os.path.join(config.model_dir, EVAL_SUBDIR),
                              progress_bar=progress_bar)
  train_steps = config.total_train_steps(source.num_examples(config.train_split))
  metrics = evaluator.evaluate_continuously(train_steps, config.eval_timeout)
  return RunResult(model_dir=config.model_dir, metrics=metrics,
                   saved_model=evaluator.saved_model)
