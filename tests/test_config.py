"""Config: the official flag set (from the spec's table), validation, derived quantities, README."""

import ast
import json
import pathlib
import re

import pytest

from conftest import GOLDEN_DIR
from simclr_tf2.flags import markdown_table
from simclr_tf2.config import Config

SPEC_FLAGS = GOLDEN_DIR.parent / 'flags.md'
README = pathlib.Path(__file__).resolve().parents[1] / 'README.md'
FLAGS_PAGE = README.parent / 'docs' / 'training.md'


def _spec_flag_table():
  """{name: (type, default)} from the 48-row table of the spec's flags.md."""
  rows = {}
  for line in SPEC_FLAGS.read_text().splitlines():
    match = re.match(r'\| (\d+) \| `(\w+)` \| (\w+) \| \*{0,2}`?([^`|*]+)`?\*{0,2} \|', line)
    if match:
      rows[match.group(2)] = (match.group(3), match.group(4).strip())
  return rows


def _parse_default(kind, text):
  if text == 'None':
    return None
  return {'float': float, 'int': int, 'bool': lambda t: t == 'True'}.get(
      kind, lambda t: t)(text)


def test_official_flags_have_the_spec_names_types_and_defaults():
  spec = _spec_flag_table()
  assert len(spec) == 48
  assert Config.official_flag_names() == list(spec)  # same names, reference order
  config = Config()
  for name, (kind, default) in spec.items():
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


def test_demo_recipes_parse_into_the_documented_runs():
  from simclr_tf2.demo import recipe  # pylint: disable=import-outside-toplevel
  pretrain = recipe('digits_demo.cfg')
  linear_eval = recipe('digits_demo.cfg', 'digits_demo_linear_eval.cfg')
  assert (pretrain.dataset, pretrain.train_mode, pretrain.use_tpu) == ('digits', 'pretrain', False)
  assert (linear_eval.train_mode, linear_eval.fine_tune_after_block,
          linear_eval.zero_init_logits_layer, linear_eval.mode) == (
              'finetune', 4, True, 'train_then_eval')
  assert linear_eval.resnet_depth == pretrain.resnet_depth  # same architecture as pretrained


@pytest.mark.parametrize('flagfile', sorted(p.name for p in (README.parent / 'flags').glob('*.cfg')))
def test_every_recipe_flagfile_gives_a_valid_config(flagfile, monkeypatch):
  from simclr_tf2.demo import recipe  # pylint: disable=import-outside-toplevel
  monkeypatch.chdir(README.parent)  # nested --flagfile paths are relative to the repository root
  recipe(flagfile)  # raises on unknown flags or invalid values
