"""Config: the official flag set (tests/data/golden/official_flags.txt), validation, derived
quantities, README.

Kn: defect numbers of the official code, listed in docs/differences.md.
"""

import ast
import json
import pathlib
import re

import pytest

from conftest import GOLDEN_DIR
from simclr_tf2.flags import markdown_table
from simclr_tf2.config import Config

README = pathlib.Path(__file__).resolve().parents[1] / 'README.md'
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

