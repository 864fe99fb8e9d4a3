"""Config: the official flag set (tests/data/golden/official_flags.txt), validation, derived
quantities, README.

Kn: defect numbers of the official code, listed in docs/differences.md.
"""

import ast
import json
import re

import pytest

from golden_data import GOLDEN_DIR
from golden_data import REPO
from simclr_tf2.flags import markdown_table
from simclr_tf2.config import Config

README = REPO / 'README.md'
FLAGS_PAGE = README.parent / 'docs' / 'training.md'


def _official_flag_table():
  """{name: (type, default)} of the official flags, in definition order."""
  rows = {}
  for line in (GOLDEN_DIR / 'official_flags.txt').read_text().splitlines():
    if line.strip() and not line.startswith('#'):
      name, kind, default = line.split(' ')
      rows[name] = (kind, default)
  return rows


def _parse_default(kind, text):
  if text == 'None':
    return None
  return {'float': float, 'int': int, 'bool': lambda t: t == 'True'}.get(
      kind, lambda t: t)(text)


def test_official_flags_have_the_official_names_types_and_defaults():
  official = _official_flag_table()
  assert len(official) == 48
  assert Config.official_flag_names() == list(official)  # same names, reference order
  config = Config()
  for name, (kind, default) in official.items():
    assert getattr(config, name) == _parse_default(kind, default), name


@pytest.mark.parametrize('overrides,flag', [
    (dict(image_size=0), 'image_size'), (dict(train_batch_size=0), 'train_batch_size'),
    (dict(train_mode='foo'), 'train_mode'), (dict(color_jitter_strength=2.), 'color_jitter_strength'),
    (dict(checkpoint_steps=0, checkpoint_epochs=0), 'checkpoint_steps'),
    (dict(resnet_depth=19), 'resnet_depth'), (dict(temperature=0.), 'temperature'),
    (dict(proj_head_mode='none', ft_proj_selector=1), 'ft_proj_selector'),
    (dict(fine_tune_after_block=4), 'fine_tune_after_block'),  # pretraining
    (dict(dataset='image_folder_unlabeled'), 'dataset'),  # needs no linear-eval head
])
def test_bad_values_give_one_line_errors_naming_the_flag(overrides, flag):
  with pytest.raises(ValueError) as error:
    Config(**overrides).validate()
  assert str(error.value).startswith(f'--{flag}=') and '\n' not in str(error.value)


NAN, INF = float('nan'), float('inf')
FINETUNE = dict(train_mode='finetune')


@pytest.mark.parametrize('overrides,message', [
    (dict(learning_rate=NAN), '--learning_rate=nan: must be finite'),
    (dict(learning_rate=-0.1), '--learning_rate=-0.1: must be >= 0'),
    (dict(weight_decay=NAN), '--weight_decay=nan: must be finite'),
    (dict(weight_decay=INF), '--weight_decay=inf: must be finite'),
    (dict(warmup_epochs=-INF), '--warmup_epochs=-inf: must be finite'),
    (dict(temperature=INF), '--temperature=inf: must be finite'),
    (dict(temperature=0.), '--temperature=0.0: must be > 0'),
    (dict(momentum=1.), '--momentum=1.0: must be in [0, 1)'),
    (dict(momentum=NAN), '--momentum=nan: must be finite'),
    (dict(batch_norm_decay=0.), '--batch_norm_decay=0.0: must be in (0, 1)'),
    (dict(sk_ratio=NAN), '--sk_ratio=nan: must be finite'),
    (dict(se_ratio=-1.), '--se_ratio=-1.0: must be >= 0'),
    (dict(color_jitter_strength=NAN), '--color_jitter_strength=nan: must be finite'),
    (dict(color_jitter_strength=1.3), '--color_jitter_strength=1.3: must be in [0, 1.25] (larger '
     'values give negative contrast/saturation bounds)'),
    (dict(keep_checkpoint_max=-1), '--keep_checkpoint_max=-1: must be >= 1 (the newest '
     'checkpoint is needed to resume)'),
    (dict(keep_checkpoint_max=0), '--keep_checkpoint_max=0: must be >= 1 (the newest '
     'checkpoint is needed to resume)'),
    (dict(FINETUNE, fine_tune_after_block=7), '--fine_tune_after_block=7: must be in [-1, 4] '
     '(-1 trains everything, 4 freezes the whole encoder)'),
    (dict(FINETUNE, fine_tune_after_block=-5), '--fine_tune_after_block=-5: must be in [-1, 4] '
     '(-1 trains everything, 4 freezes the whole encoder)'),
    (dict(eval_timeout=-1), '--eval_timeout=-1: must be >= 0'),
    (dict(train_steps=-1), '--train_steps=-1: must be >= 0'),
    (dict(eval_batch_size=0), '--eval_batch_size=0: must be >= 1'),
    (dict(seed=-1), '--seed=-1: must be in [0, 4294967295]'),
    (dict(seed=2**32), '--seed=4294967296: must be in [0, 4294967295]'),
    (dict(train_steps=1.5), '--train_steps=1.5: must be an integer'),
    (dict(image_size=True), '--image_size=True: must be an integer'),
    (dict(learning_rate='0.1'), "--learning_rate='0.1': must be a number"),
    (dict(use_blur=1), '--use_blur=1: must be true or false'),
    (dict(dataset=None), '--dataset=None: must be set'),
    (dict(model_dir=' '), "--model_dir=' ': must not be empty"),
])
def test_bad_values_give_this_exact_one_line_message(overrides, message):
  with pytest.raises(ValueError) as error:
    Config(**overrides).validate()
  assert str(error.value) == message


def test_every_number_field_has_a_range_and_the_limits_are_accepted():
  from simclr_tf2.config import RANGES  # pylint: disable=import-outside-toplevel
  floats = {f.name for f in Config.fields() if f.type in (float, 'float')}
  assert floats and floats <= set(RANGES)  # so every float is checked for NaN/inf
  Config(temperature=1e-9, momentum=0., learning_rate=0., keep_checkpoint_max=1, seed=0,
         eval_timeout=0, color_jitter_strength=1.25, train_mode='finetune',
         fine_tune_after_block=4).validate()
  Config(train_mode='finetune', fine_tune_after_block=-1, seed=2**32 - 1,
         keep_hub_module_max=-3).validate()  # keep_hub_module_max <= 0 keeps every export


def test_unknown_setting_is_named():
  with pytest.raises(TypeError, match='resnet_dept'):
    Config.from_kwargs(resnet_dept=18)


@pytest.mark.parametrize('case', ['cifar10_readme_pretrain', 'imagenet_readme_pretrain'])
def test_derived_step_counts_equal_golden(case):
  vectors = json.loads((GOLDEN_DIR / 'lr_schedule_vectors.json').read_text())[case]
  flags = dict(flag.lstrip('-').split('=') for flag in vectors['flags'])
  config = Config(**{k: type(getattr(Config(), k))(ast.literal_eval(v) if k != 'learning_rate_scaling'
                                                  else v) for k, v in flags.items()})
  examples = vectors['num_examples']
  assert config.total_train_steps(examples) == vectors['train_steps']
  assert config.warmup_steps(examples) == vectors['warmup_steps']
  assert config.epoch_steps(examples) == vectors['epoch_steps']
  assert config.steps_per_loop(examples) == vectors['checkpoint_steps']


def test_steps_per_loop_is_never_zero():
  """K21: 100 examples at batch 512 round to 0 epoch steps; the reference loops forever."""
  assert Config(train_batch_size=512).epoch_steps(100) == 0
  assert Config(train_batch_size=512).steps_per_loop(100) == 1


def test_flag_table_matches_config():
  table = {}
  for line in FLAGS_PAGE.read_text().splitlines():
    match = re.match(r'\| `(\w+)` \| `([^`]*)` \|', line)
    if match:
      table[match.group(1)] = match.group(2)
  assert table == {f.name: repr(f.default) for f in Config.fields()}
  assert markdown_table() in FLAGS_PAGE.read_text()  # regenerate: python -m simclr_tf2.flags


def test_readme_starts_with_the_two_commands():
  lines = README.read_text().splitlines()
  block = lines[lines.index('```bash') + 1:lines.index('```')]
  assert len(block) == 2
  assert 'simclr_tf2.demo' in block[0] and 'pytest' in block[1]

