"""Every setting of simclr_tf2 in one dataclass: the single source of truth.

Field names, types and defaults are the official absl flags of google-research/simclr `tf2/run.py`
(48 of them, marked ``official=True`` in the field metadata) plus a few additions that fix
documented defects (K-numbers of docs/differences.md in their help text). ``run.py`` defines its
absl flags *from* this class, so each default exists exactly once. Nothing here imports TensorFlow.
"""

import dataclasses
import json
import math
import typing
from typing import Any, Dict, Optional

from simclr_tf2.architecture import CIFAR_MAX_IMAGE_SIZE, PROJ_HEAD_MODES, RESNET_DEPTHS
from simclr_tf2.errors import ConfigError

TRAIN_MODES = ('pretrain', 'finetune', 'distill')
PRECISIONS = ('float32', 'mixed_bfloat16', 'mixed_float16')
CROP_MIN_AREA = 0.08  # the reference's random crops cover 8 %..100 % of the image
MAX_COLOR_JITTER_STRENGTH = 1.25  # beyond it contrast/saturation lower bounds go negative (K24)


def _flag(default, help_text, choices=None, official=True):
  return dataclasses.field(
      default=default,
      metadata={'help': help_text, 'choices': choices, 'official': official})


@dataclasses.dataclass
class Config:
  """All settings. Construct with keyword arguments named like the absl flags; a Config is
  validated when it is built (a one-line ConfigError names the first bad value)."""
  # --- official flags, in the order of the reference's run.py -----------------------------------
  learning_rate: float = _flag(0.3, 'Base learning rate; scaled by learning_rate_scaling.')
  learning_rate_scaling: str = _flag(
      'linear', 'How to scale the learning rate as a function of batch size: '
      'linear = lr*B/256, sqrt = lr*sqrt(B).', choices=('linear', 'sqrt'))
  warmup_epochs: float = _flag(10., 'Number of epochs of linear learning-rate warm-up.')
  weight_decay: float = _flag(1e-6, 'Amount of weight decay (TF1 default was 1e-4).')
  batch_norm_decay: float = _flag(0.9, 'Batch norm moving-average decay.')
  train_batch_size: int = _flag(512, 'Global batch size for training (images, not views).')
  train_split: str = _flag('train', 'Split for training.')
  train_epochs: int = _flag(100, 'Number of epochs to train for (when train_steps is 0).')
  train_steps: int = _flag(0, 'Number of steps to train for; overrides train_epochs if > 0.')
  eval_steps: int = _flag(0, 'Number of steps to eval for; 0 = the whole eval split.')
  eval_batch_size: int = _flag(256, 'Global batch size for evaluation.')
  checkpoint_epochs: int = _flag(1, 'Epochs between checkpoints/summaries (when checkpoint_steps is 0).')
  checkpoint_steps: int = _flag(
      0, 'Steps between checkpoints/summaries; overrides checkpoint_epochs if > 0.')
  eval_split: str = _flag('validation', 'Split for evaluation.')
  dataset: str = _flag(
      'imagenet2012', 'Dataset: a TFDS name, "digits" (embedded offline dataset), '
      '"image_folder" (data_dir/<split>/<class>/*.jpg) or "image_folder_unlabeled" '
      '(data_dir/<split>/*.jpg, pretraining or distillation only).')
  cache_dataset: bool = _flag(False, 'Whether to cache the decoded split in memory.')
  mode: str = _flag('train', 'Whether to train, evaluate, or train then evaluate.',
                    choices=('train', 'eval', 'train_then_eval'))
  train_mode: str = _flag(
      'pretrain', 'pretrain = SimCLR contrastive pretraining; finetune = supervised training '
      '(linear eval with fine_tune_after_block=4); distill = train a student on the outputs of '
      'a frozen --teacher_checkpoint (SimCLRv2 stage 3; an addition).', choices=TRAIN_MODES)
  lineareval_while_pretraining: bool = _flag(
      True, 'Train a linear head on stop-gradient features while pretraining.')
  checkpoint: Optional[str] = _flag(
      None, 'Checkpoint prefix or directory, or SavedModel, to initialise the model from when '
      'model_dir has none; with --mode=eval, the one model to evaluate.')
  zero_init_logits_layer: bool = _flag(
      False, 'Zero-initialise the supervised head after restoring from --checkpoint.')
  fine_tune_after_block: int = _flag(
      -1, 'Freeze the encoder up to this block group when finetuning: -1 trains everything, '
      '0 freezes the stem, 4 freezes the whole encoder (linear evaluation).')
  master: Optional[str] = _flag(None, 'TPU address (used when tpu_name is empty).')
  model_dir: Optional[str] = _flag(None, 'Directory for checkpoints, summaries and exports.')
  data_dir: Optional[str] = _flag(None, 'Directory of the prepared TFDS data or of the image folder.')
  use_tpu: bool = _flag(True, 'Run on a TPU (official default); use --use_tpu=False for GPU/CPU.')
  tpu_name: Optional[str] = _flag(None, 'Cloud TPU name or grpc:// address.')
  tpu_zone: Optional[str] = _flag(None, 'GCE zone of the Cloud TPU.')
  gcp_project: Optional[str] = _flag(None, 'Project name of the Cloud TPU.')
  optimizer: str = _flag('lars', 'Optimizer to use.', choices=('momentum', 'adam', 'lars'))
  momentum: float = _flag(0.9, 'Momentum parameter (lars and momentum).')
  eval_name: Optional[str] = _flag(None, 'Name for the eval (unused, kept for compatibility).')
  keep_checkpoint_max: int = _flag(5, 'Maximum number of checkpoints to keep.')
  keep_hub_module_max: int = _flag(1, 'Maximum number of SavedModel exports to keep (<=0 keeps all).')
  temperature: float = _flag(0.1, 'Temperature of the NT-Xent contrastive loss.')
  hidden_norm: bool = _flag(True, 'L2-normalise projection outputs before the contrastive loss.')
  proj_head_mode: str = _flag('nonlinear', 'Type of projection head.',
                              choices=PROJ_HEAD_MODES)
  proj_out_dim: int = _flag(128, 'Output width of the projection head.')
  num_proj_layers: int = _flag(3, 'Number of layers of the nonlinear projection head.')
  ft_proj_selector: int = _flag(
      0, 'Which projection-head layer feeds the supervised head: 0 = head input (encoder '
      'output), -1 = last layer (Python indexing into [input, layer1, ..., layerK]).')
  global_bn: bool = _flag(True, 'Synchronise batch-norm statistics across replicas.')
  width_multiplier: int = _flag(1, 'Channel multiplier of the ResNet.')
  resnet_depth: int = _flag(50, 'Depth of the ResNet: 18, 34, 50, 101, 152 or 200.')
  sk_ratio: float = _flag(0., 'Selective-kernel ratio; > 0 enables SK convs and ResNet-D '
                          '(paper value 0.0625).')
  se_ratio: float = _flag(0., 'Squeeze-and-excitation ratio; > 0 adds SE layers.')
  image_size: int = _flag(224, 'Input image size; <= 32 selects the CIFAR stem and eval pipeline.')
  color_jitter_strength: float = _flag(
      1.0, 'Strength of colour jitter in pretraining, 0 to 1.25 (0 disables colour distortion).')
  use_blur: bool = _flag(True, 'Random Gaussian blur of pretraining views.')

  # --- additions (not in the reference) -------------------------------------------------------
  train_summary_steps: int = _flag(
      0, 'Deprecated TF1 flag accepted so the official README commands parse; ignored (K16).',
      official=False)
  freeze_bn_stats_when_frozen: bool = _flag(
      True, 'Run frozen encoder parts (fine_tune_after_block) with batch-norm in inference mode '
      'so their statistics do not drift, as TF1 did. False = TF2 reference behaviour (K6).',
      official=False)
  freeze_unused_proj_head: bool = _flag(
      True, 'In finetune mode, do not train projection-head layers the supervised head does not '
      'use (no gradients, no weight decay, frozen statistics). False = reference behaviour (K7).',
      official=False)
  seed: Optional[int] = _flag(
      None, 'Global random seed for initialisation and augmentation; None = unseeded (K35).',
      official=False)
  eval_timeout: Optional[int] = _flag(
      None, 'mode=eval: stop waiting for new checkpoints after this many seconds (K9).',
      official=False)
  precision: str = _flag(
      'float32', 'Compute precision. float32: the reference. mixed_bfloat16 (TPUs, CPUs with '
      'AVX512-BF16/AMX) and mixed_float16 (GPUs; dynamic loss scaling): layers compute in 16 '
      'bits while variables, batch-norm statistics, the optimizer and the losses stay float32, '
      'so checkpoints are interchangeable.', choices=PRECISIONS, official=False)
  jit_compile: bool = _flag(
      False, 'Compile the forward/backward pass of the training and evaluation steps with XLA '
      '(off by default: slower on CPUs; try it on GPUs).', official=False)
  skip_corrupt_images: bool = _flag(
      True, 'Image folders: skip unreadable images with a counted warning instead of failing.',
      official=False)
  knn_monitor_steps: int = _flag(
      0, 'Every this many training steps, write the kNN top-1 accuracy of the encoder on the '
      'labeled eval split (train split as memory bank) as the scalar knn/top_1_accuracy; '
      '0 = off.', official=False)
  crop_min_area: float = _flag(
      CROP_MIN_AREA, 'Smallest fraction of the image area a random training crop covers, in '
      '(0, 1]; the reference fixes 0.08 (and its floor of 0.1 still applies below that). Raise '
      'it for small images or small objects.', official=False)
  horizontal_flip: bool = _flag(
      True, 'Randomly flip training images left-right (the reference always does); false for '
      'data whose mirror image is another thing: digits, text, plans, some scans.',
      official=False)
  micro_batch_size: int = _flag(
      0, 'Run each replica\'s training batch in chunks of this many images, one after another '
      '(must divide the per-replica batch): the memory of a chunk, the loss of the whole batch. '
      'Pretraining caches the projections\' gradients (exact NT-Xent over the whole batch); '
      'finetuning accumulates gradients. A chunk is a batch-norm batch: as many times more '
      'replicas with --global_bn=false, which it needs (docs/training.md). 0 = no chunking.',
      official=False)
  teacher_checkpoint: Optional[str] = _flag(
      None, 'train_mode=distill: the frozen teacher, a fine-tuned model with a supervised head: '
      'a run\'s model_dir, a checkpoint prefix or directory (this project\'s or the official '
      'layout; architecture detected) or an exported SavedModel.', official=False)
  distill_temperature: float = _flag(
      1.0, 'train_mode=distill: softmax temperature of teacher and student (> 0); the loss is '
      'scaled by its square. SimCLRv2 uses 1.', official=False)
  distill_label_weight: float = _flag(
      0.0, 'train_mode=distill: weight w in [0, 1] of the ground-truth cross-entropy, loss = '
      '(1 - w) * distillation + w * supervised; 0 uses no labels (unlabeled data works).',
      official=False)
  label_fraction: float = _flag(
      1.0, 'finetune/distill: train on a class-balanced, seeded subset of this fraction of the '
      'train split, in (0, 1]; its example ids are written to model_dir/label_subset.json and '
      'reused on resume. 1 = the whole split.', official=False)
  allow_non_finite_checkpoint: bool = _flag(
      False, 'Restore checkpoints containing NaN/inf values instead of refusing them '
      '(for inspecting a diverged run).', official=False)
  export_saved_model: bool = _flag(
      True, 'Write a SavedModel (model_dir/saved_model/<step>) after training and after every '
      'evaluation; false writes checkpoints only (export one later with '
      'simclr-export-saved-model).', official=False)

  # ------------------------------------------------------------------------------------------
  @classmethod
  def fields(cls):
    return dataclasses.fields(cls)

  @classmethod
  def official_flag_names(cls):
    return [f.name for f in cls.fields() if f.metadata['official']]

  @classmethod
  def from_kwargs(cls, **kwargs) -> 'Config':
    """Like the constructor, but an unknown name is a one-line error naming it."""
    known = {f.name for f in cls.fields()}
    unknown = sorted(set(kwargs) - known)
    if unknown:
      raise TypeError(f'unknown setting(s) {", ".join(unknown)}; settings are named like the '
                      'absl flags (e.g. resnet_depth, image_size)')
    return cls(**kwargs)

  @classmethod
  def from_json(cls, path: str) -> 'Config':
    """The Config a run wrote (model_dir/config.json), or any JSON object of settings."""
    try:
      with open(path, encoding='utf-8') as f:
        values = json.load(f)
    except (OSError, ValueError) as error:
      raise ValueError(f'cannot read settings from {path}: {error}') from None
    if not isinstance(values, dict):
      raise ValueError(f'{path}: expected a JSON object of settings, got {type(values).__name__}')
    try:
      return cls.from_kwargs(**values)
    except TypeError as error:
      raise ValueError(f'{path}: {error}') from None

  def replace(self, **kwargs) -> 'Config':
    return self.from_kwargs(**{**self.to_dict(), **kwargs})

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)

  # --- validation -----------------------------------------------------------------------------
  def __post_init__(self):
    self.validate()

  def validate(self) -> 'Config':
    """Raises ConfigError (a ValueError) with a one-line message for the first invalid value.

    Types, NaN/inf, ranges and choices of every field, then the rules linking several fields.
    Runs when the Config is built; call it again only after changing a field in place.
    """
    hints = typing.get_type_hints(type(self))
    for f in self.fields():
      value = getattr(self, f.name)
      _check_type(f.name, value, hints[f.name])
      choices = f.metadata['choices']
      if choices and value not in choices:
        _fail(f.name, value, f'must be one of {", ".join(choices)}')
      if value is not None and f.name in RANGES:
        check_range(f.name, value)
    if self.checkpoint_steps == 0 and self.checkpoint_epochs == 0:
      _fail('checkpoint_steps', 0, 'and checkpoint_epochs=0 leave no steps per loop; set one > 0')
    if self.resnet_depth not in RESNET_DEPTHS:
      _fail('resnet_depth', self.resnet_depth, f'must be one of {RESNET_DEPTHS}')
    if self.model_dir is not None and not self.model_dir.strip():
      _fail('model_dir', self.model_dir, 'must not be empty')
    num_hiddens = self.num_projection_outputs()
    if not -num_hiddens <= self.ft_proj_selector < num_hiddens:
      _fail('ft_proj_selector', self.ft_proj_selector,
            f'must index the {num_hiddens} projection-head outputs of proj_head_mode='
            f'{self.proj_head_mode} (range {-num_hiddens}..{num_hiddens - 1})')
    if (self.train_mode == 'pretrain' and self.mode != 'eval' and
        self.fine_tune_after_block != -1):
      _fail('fine_tune_after_block', self.fine_tune_after_block,
            'must be -1 when pretraining (freezing only applies to train_mode=finetune)')
    unlabeled = self.dataset == 'image_folder_unlabeled'
    if unlabeled and self.train_mode == 'distill':
      if self.distill_label_weight > 0 or self.mode != 'train':
        _fail('dataset', self.dataset, 'has no labels: distill with --distill_label_weight=0 '
              'and --mode=train')
    elif unlabeled and (self.train_mode == 'finetune' or self.lineareval_while_pretraining):
      _fail('dataset', self.dataset, 'has no labels: use train_mode=pretrain with '
            '--lineareval_while_pretraining=false, or train_mode=distill')
    if self.train_mode == 'distill' and self.mode != 'eval' and not self.teacher_checkpoint:
      _fail('teacher_checkpoint', self.teacher_checkpoint,
            'is required with train_mode=distill (a fine-tuned model with a supervised head)')
    if self.label_fraction < 1 and self.train_mode == 'pretrain':
      _fail('label_fraction', self.label_fraction,
            'applies to train_mode=finetune or distill (pretraining uses every image)')
    if self.micro_batch_size and (self.micro_batch_size > self.train_batch_size or
                                  self.train_batch_size % self.micro_batch_size):
      _fail('micro_batch_size', self.micro_batch_size, 'must divide the per-replica training '
            f'batch (train_batch_size={self.train_batch_size} / replicas); 0 = no chunking')
    if self.micro_batch_size and self.global_bn:
      # Synchronised batch norm all-reduces inside the chunk loop, which tf.distribute cannot run
      # (merge_call in control flow); and a chunk could not see the whole batch's statistics.
      _fail('micro_batch_size', self.micro_batch_size, 'needs --global_bn=false: a chunk is a '
            'batch-norm batch (the same thing as global_bn on one device; docs/training.md)')
    if self.micro_batch_size and self.jit_compile:
      _fail('micro_batch_size', self.micro_batch_size, 'does not work with --jit_compile=true '
            '(XLA does not compile the chunk loop); use one or the other')
    if self.knn_monitor_steps and self.dataset == 'image_folder_unlabeled':
      _fail('knn_monitor_steps', self.knn_monitor_steps, 'needs labels; dataset '
            'image_folder_unlabeled has none')
    return self

  # --- derived quantities (as the official code computes them) -----------------------------------
  def num_projection_outputs(self) -> int:
    """Length of the projection head's [input, layer outputs...] list."""
    return {'none': 1, 'linear': 2}.get(self.proj_head_mode, self.num_proj_layers + 1)

  @property
  def cifar_stem(self) -> bool:
    return self.image_size <= CIFAR_MAX_IMAGE_SIZE

  def peak_learning_rate(self) -> float:
    if self.learning_rate_scaling == 'linear':
      return self.learning_rate * self.train_batch_size / 256.
    return self.learning_rate * math.sqrt(self.train_batch_size)

  def total_train_steps(self, num_train_examples: int) -> int:
    """train_steps, or floor(N * epochs / B) + 1 like the reference."""
    if self.train_steps:
      return self.train_steps
    return num_train_examples * self.train_epochs // self.train_batch_size + 1

  def total_eval_steps(self, num_eval_examples: int) -> int:
    if self.eval_steps:
      return self.eval_steps
    return -(-num_eval_examples // self.eval_batch_size)

  def epoch_steps(self, num_train_examples: int) -> int:
    return int(round(num_train_examples / self.train_batch_size))

  def warmup_steps(self, num_train_examples: int) -> int:
    return int(round(self.warmup_epochs * num_train_examples // self.train_batch_size))

  def steps_per_loop(self, num_train_examples: int) -> int:
    """Steps between checkpoints and summaries. Never 0 (the reference then loops forever, K21)."""
    steps = self.checkpoint_steps or self.checkpoint_epochs * self.epoch_steps(num_train_examples)
    return max(1, steps)


# Numeric ranges of the fields: (low, high, low_inclusive, high_inclusive, why). None = unbounded.
# Every float must also be finite. Fields not listed take any value of their type
# (keep_hub_module_max <= 0 keeps every export; ft_proj_selector depends on proj_head_mode).
_AT_LEAST_0 = (0, None, True, True, '')
_AT_LEAST_1 = (1, None, True, True, '')
RANGES = {
    'learning_rate': _AT_LEAST_0,
    'warmup_epochs': _AT_LEAST_0,
    'weight_decay': _AT_LEAST_0,
    'batch_norm_decay': (0, 1, False, False, ''),
    'momentum': (0, 1, True, False, ''),
    'temperature': (0, None, False, True, ''),
    'distill_temperature': (0, None, False, True, ''),
    'distill_label_weight': (0, 1, True, True, ''),
    'label_fraction': (0, 1, False, True, ''),
    'sk_ratio': _AT_LEAST_0,
    'se_ratio': _AT_LEAST_0,
    'crop_min_area': (0, 1, False, True, ''),
    'color_jitter_strength': (0, MAX_COLOR_JITTER_STRENGTH, True, True,
                              ' (larger values give negative contrast/saturation bounds)'),
    'train_batch_size': _AT_LEAST_1,
    'eval_batch_size': _AT_LEAST_1,
    'image_size': _AT_LEAST_1,
    'width_multiplier': _AT_LEAST_1,
    'proj_out_dim': _AT_LEAST_1,
    'keep_checkpoint_max': (1, None, True, True, ' (the newest checkpoint is needed to resume)'),
    'train_epochs': _AT_LEAST_0,
    'train_steps': _AT_LEAST_0,
    'eval_steps': _AT_LEAST_0,
    'checkpoint_epochs': _AT_LEAST_0,
    'checkpoint_steps': _AT_LEAST_0,
    'num_proj_layers': _AT_LEAST_0,
    'train_summary_steps': _AT_LEAST_0,
    'fine_tune_after_block': (-1, 4, True, True,
                              ' (-1 trains everything, 4 freezes the whole encoder)'),
    'eval_timeout': _AT_LEAST_0,
    'knn_monitor_steps': _AT_LEAST_0,
    'micro_batch_size': (0, None, True, True, ' (0 = no chunking)'),
    'seed': (0, 2**32 - 1, True, True, ''),
}


def check_range(name: str, value) -> None:
  """One-line ConfigError `--name=value: ...` unless `value` is finite and in RANGES[name].

  The single home of each field's range: Config.validate uses it, and so do library functions
  that take such a value without a Config (e.g. augment.preprocess_image).
  """
  if isinstance(value, float) and not math.isfinite(value):
    _fail(name, value, 'must be finite')
  low, high, low_inclusive, high_inclusive, why = RANGES[name]
  too_low = low is not None and (value < low if low_inclusive else value <= low)
  too_high = high is not None and (value > high if high_inclusive else value >= high)
  if not (too_low or too_high):
    return
  if high is None:
    _fail(name, value, f'must be {">=" if low_inclusive else ">"} {low}{why}')
  _fail(name, value, f'must be in {"[" if low_inclusive else "("}{low}, {high}'
        f'{"]" if high_inclusive else ")"}{why}')


def _check_type(name, value, annotation):
  """bool/int/float/str fields (possibly Optional) hold values of that type; ints are floats."""
  allowed = typing.get_args(annotation) or (annotation,)
  if value is None:
    if type(None) not in allowed:
      _fail(name, value, 'must be set')
    return
  kind = next(a for a in allowed if a is not type(None))
  if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
    return  # finiteness: check_range (every float field is in RANGES)
  if type(value) is not kind:  # bool is not accepted as int, nor int as bool
    _fail(name, value, f'must be {_TYPE_NAMES[kind]}')


_TYPE_NAMES = {bool: 'true or false', int: 'an integer', float: 'a number', str: 'a string'}


def _fail(name, value, why):
  raise ConfigError(f'--{name}={value!r}: {why}')
