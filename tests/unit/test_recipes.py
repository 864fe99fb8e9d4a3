"""Recipes (flags/*.cfg shipped in the package): lookup by name, `--flagfile` expansion with nested
files relative to the including file, cycles and missing files, and every recipe a valid Config.

Expected flag lists are written out by hand from the files the tests create (or from the recipe
files as they read in flags/), not produced by the code under test.
"""

import json
import pathlib

import pytest
from absl import flags

from golden_data import REPO
from checkpoints_conversion import cli
from simclr_tf2 import flags as config_flags
from simclr_tf2 import recipes
from simclr_tf2.demo import recipe

FLAGS_DIR = REPO / 'flags'


def write(path, *lines):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text('\n'.join(lines) + '\n')
  return path


def test_every_file_of_flags_is_a_recipe_found_by_name_with_or_without_suffix(elsewhere):
  files = sorted(FLAGS_DIR.glob('*.cfg'))
  assert len(files) == 18 and recipes.list_recipes() == [f.stem for f in files]
  for file in files:
    for name in (file.stem, file.name):
      assert pathlib.Path(recipes.recipe_path(name)).read_text() == file.read_text()


def test_an_existing_path_wins_over_a_recipe_of_the_same_name(elsewhere):
  write(elsewhere / 'digits_demo.cfg', '--train_epochs=3')
  assert recipes.recipe_path('digits_demo.cfg') == str(elsewhere / 'digits_demo.cfg')
  assert recipes.expand_flagfiles(['--flagfile=digits_demo.cfg']) == ['--train_epochs=3']
  assert recipes.recipe_path('digits_demo') != str(elsewhere / 'digits_demo.cfg')  # no file


def test_packaged_recipe_with_a_nested_recipe_expands_from_another_directory(elsewhere):
  argv = recipes.expand_flagfiles(['prog', '--flagfile=cifar10_finetune', '--learning_rate=0.2'])
  linear_eval = [line for line in (FLAGS_DIR / 'cifar10_linear_eval.cfg').read_text().splitlines()
                 if line.startswith('--')]
  assert argv == ['prog', *linear_eval, '--fine_tune_after_block=-1', '--learning_rate=0.05',
                  '--weight_decay=1e-6', '--model_dir=/tmp/simclr_cifar10_finetune',
                  '--learning_rate=0.2']


def test_nested_flagfiles_resolve_relative_to_the_including_file(elsewhere, tmp_path):
  write(tmp_path / 'runs' / 'outer.cfg',
        '# a comment', '// another comment', '', '   ', '--train_epochs=5',
        '--flagfile=sub/inner.cfg', '  --temperature=0.3  ', '--flagfile=', '--flagfile=digits_demo')
  write(tmp_path / 'runs' / 'sub' / 'inner.cfg', '--flagfile=../../leaf.cfg', '--resnet_depth=34')
  write(tmp_path / 'leaf.cfg', '--image_size=24')
  digits_demo = [line for line in (FLAGS_DIR / 'digits_demo.cfg').read_text().splitlines()
                 if line.startswith('--')]
  assert recipes.expand_flagfiles(['prog', '--flagfile', '../runs/outer.cfg', '--seed=1']) == [
      'prog', '--train_epochs=5', '--image_size=24', '--resnet_depth=34', '--temperature=0.3',
      *digits_demo, '--seed=1']
  # After `--` nothing is expanded (absl's convention).
  assert recipes.expand_flagfiles(['--', '--flagfile=x']) == ['--', '--flagfile=x']


@pytest.mark.parametrize('layout', ['self', 'pair'])
def test_a_cycle_is_an_error_naming_the_files(layout, tmp_path):
  if layout == 'self':
    write(tmp_path / 'a.cfg', '--seed=1', '--flagfile=a.cfg')
  else:
    write(tmp_path / 'a.cfg', '--flagfile=dir/b.cfg')
    write(tmp_path / 'dir' / 'b.cfg', '--flagfile=../a.cfg')
  with pytest.raises(recipes.RecipeError, match=r'^flagfile cycle: .*a\.cfg -> .*a\.cfg$') as info:
    recipes.expand_flagfiles([f'--flagfile={tmp_path / "a.cfg"}'])
  assert '\n' not in str(info.value)
  assert (str(tmp_path / 'dir' / 'b.cfg') in str(info.value)) == (layout == 'pair')


def test_a_missing_file_is_an_error_naming_it(elsewhere, tmp_path):
  with pytest.raises(recipes.RecipeError, match=r'^flagfile not found: no_such_recipe is not a '):
    recipes.expand_flagfiles(['prog', '--flagfile=no_such_recipe'])
  write(tmp_path / 'outer.cfg', '--seed=1', '--flagfile=missing.cfg')
  with pytest.raises(recipes.RecipeError) as info:
    recipes.expand_flagfiles([f'--flagfile={tmp_path / "outer.cfg"}'])
  assert str(info.value).startswith(f'flagfile not found: {tmp_path}/missing.cfg ')
  assert 'digits_demo' in str(info.value) and '\n' not in str(info.value)  # lists the recipes
  with pytest.raises(recipes.RecipeError, match='needs a file name'):
    recipes.expand_flagfiles(['prog', '--flagfile'])


@pytest.mark.parametrize('name', [path.stem for path in sorted(FLAGS_DIR.glob('*.cfg'))])
def test_every_recipe_gives_a_valid_config(name, elsewhere):
  config = recipe(name)  # raises on unknown flags or invalid values
  for line in (FLAGS_DIR / f'{name}.cfg').read_text().splitlines():
    if line.startswith('--model_dir='):  # the file's own flags win over the nested ones
      assert config.model_dir == line.split('=', 1)[1]


def test_nested_recipes_take_the_flags_of_both_files(elsewhere):
  config = recipe('simclrv2_r152_3x_sk_pretrain')
  assert (config.dataset, config.temperature, config.resnet_depth, config.width_multiplier,
          config.train_epochs) == ('imagenet2012', 0.1, 152, 3, 800)


def test_paper_recipes_hold_the_settings_their_comments_cite(elsewhere):
  """Values written out by hand from the papers' text as docs/semi_supervised.md and
  docs/transfer.md quote it (SimCLRv2 Section 3.1; SimCLR v1 Appendix B.8.1)."""
  def settings(name, *fields):
    config = recipe(name)
    return tuple(getattr(config, field) for field in fields)

  schedule = ('optimizer', 'learning_rate', 'learning_rate_scaling', 'warmup_epochs',
              'train_batch_size', 'train_epochs')
  assert settings('simclrv2_r152_3x_sk_pretrain', *schedule, 'num_proj_layers') == (
      'lars', 0.1, 'sqrt', 40, 4096, 800, 3)  # 0.1 x sqrt(B), warm-up 5 % of 800 epochs
  assert settings('simclrv2_finetune_1pct', *schedule, 'ft_proj_selector', 'weight_decay') == (
      'lars', 0.005, 'sqrt', 0, 1024, 60, 1, 0)
  assert settings('simclrv2_finetune_10pct', 'train_epochs', 'ft_proj_selector') == (30, 1)
  distill = ('train_mode', 'distill_temperature', 'distill_label_weight', 'train_epochs',
             'warmup_epochs', 'learning_rate', 'train_batch_size')
  assert settings('simclrv2_self_distill', *distill, 'resnet_depth', 'ft_proj_selector') == (
      'distill', 0.1, 0, 400, 20, 0.1, 4096, 152, 0)
  assert settings('simclrv2_distill_to_r50', *distill, 'resnet_depth') == (
      'distill', 1.0, 0, 400, 20, 0.1, 4096, 50)
  transfer = ('dataset', 'image_size', 'train_mode', 'fine_tune_after_block', 'optimizer',
              'momentum', 'train_steps', 'train_batch_size', 'batch_norm_decay',
              'proj_head_mode', 'resnet_depth')
  expected = ('cifar10', 224, 'finetune', -1, 'momentum', 0.9, 20000, 256, 0.9488, 'none', 50)
  assert settings('cifar10_transfer_finetune_r50_1x', *transfer, 'width_multiplier') == (
      *expected, 1)
  assert settings('cifar10_transfer_finetune_r50_4x', *transfer, 'width_multiplier') == (
      *expected, 4)
  assert round(max(1 - 10 / (50000 / 256), 0.9), 4) == 0.9488  # B.8.1's batch-norm momentum


def test_demo_recipes_parse_into_the_documented_runs(elsewhere):
  pretrain = recipe('digits_demo.cfg')
  linear_eval = recipe('digits_demo.cfg', 'digits_demo_linear_eval.cfg')
  assert (pretrain.dataset, pretrain.train_mode, pretrain.use_tpu) == ('digits', 'pretrain', False)
  assert (linear_eval.train_mode, linear_eval.fine_tune_after_block,
          linear_eval.zero_init_logits_layer, linear_eval.mode) == (
              'finetune', 4, True, 'train_then_eval')
  assert linear_eval.resnet_depth == pretrain.resnet_depth  # same architecture as pretrained


def test_entry_point_parser_expands_recipes_and_fails_in_one_line(elsewhere, capsys):
  values = flags.FlagValues()
  config_flags.define_config_flags(values)
  parse = recipes.flags_parser(values)
  assert parse(['prog', '--flagfile=cifar10_r50_pretrain']) == ['prog']
  assert (values.dataset, values.resnet_depth, values.train_epochs) == ('cifar10', 50, 1000)
  for argv in (['prog', '--flagfile=nope'], ['prog', '--no_such_flag=1']):
    with pytest.raises(SystemExit) as info:
      parse(argv)
    assert str(info.value).startswith('error: ') and '\n' not in str(info.value)


def test_own_flags_parser_parses_its_flags_and_answers_help(capsys):
  """Entry points with their own FlagValues (demo, simclr-tf2-embed): their flags, absl's own
  flags parsed for app.run, and --help listing their flags (absl defines it on FLAGS only)."""
  values = flags.FlagValues()
  flags.DEFINE_integer('epochs', 3, 'Passes over the data.', flag_values=values)
  parse = recipes.own_flags_parser(values)
  assert parse(['prog', '--epochs=5']) == ['prog'] and values.epochs == 5
  assert flags.FLAGS.is_parsed()
  for argument in ('--help', '-h'):
    with pytest.raises(SystemExit) as info:
      parse(['/bin/prog', argument])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith('usage: prog [flags]') and '--epochs: Passes over the data.' in out


def test_conversion_cli_accepts_a_recipe_name(elsewhere, capsys):
  seen = {}

  def define(flag_values):
    config_flags.define_config_flags(flag_values, names={'resnet_depth', 'width_multiplier'})

  def action(flag_values):
    seen['depth'] = flag_values.resnet_depth
    seen['width'] = flag_values.width_multiplier

  assert cli.run(define, action, ['prog', '--flagfile=simclrv2_r152_3x_sk_pretrain']) == 1
  assert 'error: ' in capsys.readouterr().err  # the recipe's other flags are unknown here
  define_all = config_flags.define_config_flags
  assert cli.run(define_all, action, ['prog', '--flagfile=simclrv2_r152_3x_sk_pretrain']) == 0
  assert seen == {'depth': 152, 'width': 3}
  assert cli.run(define_all, action, ['prog', '--flagfile=nope']) == 1
  assert capsys.readouterr().err.startswith('error: flagfile not found: nope ')




def test_demo_refuses_a_folder_made_with_other_settings(tmp_path):
  """The demo never reports results of runs made with other settings than it was given."""
  from simclr_tf2 import demo  # pylint: disable=import-outside-toplevel
  from simclr_tf2.errors import ConfigError  # pylint: disable=import-outside-toplevel
  earlier = demo.recipe('digits_demo.cfg', train_epochs=3,
                        model_dir=str(tmp_path / 'pretrain'))
  (tmp_path / 'pretrain').mkdir()
  (tmp_path / 'pretrain' / 'config.json').write_text(json.dumps(earlier.to_dict()))
  with pytest.raises(ConfigError, match=r"pretrain was made by a demo with other settings "
                     r"\(train_epochs 3 -> 4\)"):
    demo.run_demo(str(tmp_path), pretrain_epochs=4)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['pretrain']
