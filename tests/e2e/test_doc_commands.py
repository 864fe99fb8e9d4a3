"""Every shell command of README.md and docs/*.md runs as written, or is marked in its page as
not runnable here and then has its flags checked, so the docs cannot rot.

Each command of a ```bash block is in exactly one category:
- excused by its prefix (NOT_RUN, with the reason): installs (the README's demo line among
  them), the suite itself, servers, benchmarks, the cluster lines
  tests/e2e/test_multiworker_command.py runs, SLURM;
- marked in its page by the comment line directly above it, `# not run by the tests: <reason>`
  (needs ImageNet or CIFAR-10 from TFDS, a TPU, hours of training): parsed by its own command's
  flag parser (recipes expanded; for training, the Config built and validated), with shell
  variables ($TPU_NAME) read as a dummy word and a bare `...` ("and so on") dropped;
- everything else runs as written: the page's commands in order in one empty working directory
  (a later command uses what an earlier one wrote, as a reader would), in this process through
  the in-process entry point of its module (the same parser, checks and action as its console
  script) under the default one-device strategy. No flag is appended, no dataset swapped.
A command in none of these fails the test, so a new command is either runnable or classified.

The only substitutions in commands that run are the placeholders for what the reader brings,
replaced by small stand-ins made once per module:
  /data/my_images             an unlabeled image folder (train/*.png)
  /data/my_labeled_images     a labeled image folder (<split>/<class>/*.png)
  /checkpoints/r50...         an official-layout ResNet-50 checkpoint (untrained, 40 px)
  /checkpoints/..., MODEL_DIR a ResNet-18 run of 1 step on the embedded digits (any other name)
  /saved_models/...           the SavedModel that ResNet-18 run exported
and what a marked command of the page would have written, made in the page's working directory
before its commands run (PAGE_OUTPUTS):
  README.md: runs/my_images   the tiny ResNet-18 run (the marked pretraining on /data/my_images)
"""

import contextlib
import io
import os
import re
import shlex

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from PIL import Image

from golden_data import REPO
from checkpoints_conversion import convert_to_pytorch, export_saved_model
from simclr_tf2 import command as command_line
from simclr_tf2 import embed, recipes
from simclr_tf2 import flags as config_flags
from simclr_tf2 import run as run_command
from simclr_tf2.errors import one_line
from simclr_tf2.network.model import build_model

# One xdist worker runs this module, so its session-scoped runs are built once (module-scoped
# ones were built again when the worker's test order left the module and came back).
pytestmark = pytest.mark.xdist_group('test_doc_commands')

PAGES = [REPO / 'README.md'] + sorted((REPO / 'docs').glob('*.md'))

NOT_RUN = {  # command prefix: why no test runs it
    'pip install': 'installs packages: .ci/run runs the README install commands',
    'python -m pytest': 'the test suite itself (.ci/run)',
    'tensorboard': 'starts a web server',
    'python bench/': 'benchmarks take minutes and assert nothing: run by hand',
    'TF_CONFIG=': 'one worker of a cluster: tests/e2e/test_multiworker_command.py runs the loopback '
                  'cluster of docs/distributed.md as written',
    'CLUSTER=': 'a shell variable of the loopback cluster (tests/e2e/test_multiworker_command.py)',
    'FLAGS=': 'a shell variable of the loopback cluster (tests/e2e/test_multiworker_command.py)',
    'wait': 'waits for the loopback cluster\'s background worker '
            '(tests/e2e/test_multiworker_command.py)',
    'srun': 'needs a SLURM cluster',
}
MARKER = re.compile(r'#\s*not run by the tests:(.*)')
ENTRY_POINTS = {  # program as written -> module
    'simclr-tf2': 'simclr_tf2.run',
    'python -m simclr_tf2.run': 'simclr_tf2.run',
    'simclr-export-saved-model': 'checkpoints_conversion.export_saved_model',
    'python -m checkpoints_conversion.export_saved_model':
        'checkpoints_conversion.export_saved_model',
    'simclr-convert-to-pytorch': 'checkpoints_conversion.convert_to_pytorch',
    'python -m checkpoints_conversion.convert_to_pytorch':
        'checkpoints_conversion.convert_to_pytorch',
    'simclr-tf2-embed': 'simclr_tf2.embed',
    'python -m simclr_tf2.embed': 'simclr_tf2.embed',
}
# Each command runs in this process through its module's in-process entry point (the same flags
# parser, checks and action as the console script; one TensorFlow start-up for the whole page).
IN_PROCESS = {
    'simclr_tf2.run': lambda argv: run_command.run_in_process(
        argv, strategy=tf.distribute.get_strategy()),
    'simclr_tf2.embed': embed.run,
    'checkpoints_conversion.export_saved_model': export_saved_model.run,
    'checkpoints_conversion.convert_to_pytorch': convert_to_pytorch.run,
}
FLAG_DEFINITIONS = {  # module -> its public define_flags, for the flags of marked commands
    'simclr_tf2.run': run_command.define_flags,
    'simclr_tf2.embed': embed.define_flags,
    'checkpoints_conversion.export_saved_model': export_saved_model.define_flags,
    'checkpoints_conversion.convert_to_pytorch': convert_to_pytorch.define_flags,
}
# What a page's marked commands would have written, that its later commands use: path in the
# page's working directory -> stand-in.
PAGE_OUTPUTS = {'README.md': {'runs/my_images': 'r18'}}
# The stand-in run: 1 step on the embedded digits.
TINY_RUN = ['--dataset=digits', '--mode=train', '--use_tpu=false', '--train_steps=1',
            '--checkpoint_steps=1', '--train_batch_size=8', '--use_blur=false',
            '--resnet_depth=18', '--image_size=8']


def shell_commands(page):
  """(command, reason) for each command of the page's ```bash blocks, continuation lines joined
  and comments dropped; reason: that of a `# not run by the tests: <reason>` line directly
  above the command, else None."""
  commands = []
  for block in re.findall(r'```bash\n(.*?)```', page.read_text(encoding='utf-8'), flags=re.S):
    reason = None
    for line in block.replace('\\\n', ' ').splitlines():
      line = line.strip()
      command = line.split(' #', 1)[0].strip()
      if command and not line.startswith('#'):
        commands.append((command, reason))
      marker = MARKER.fullmatch(line)
      reason = marker.group(1).strip() if marker else None
  return commands


def markers(page):
  """The page's `# not run by the tests:` lines inside ```bash blocks."""
  return [line for block in re.findall(r'```bash\n(.*?)```', page.read_text(encoding='utf-8'),
                                       flags=re.S)
          for line in block.splitlines() if MARKER.fullmatch(line.strip())]


def excuse(command):
  return next((why for prefix, why in NOT_RUN.items() if command.startswith(prefix)), None)


def entry_point(command):
  for program in sorted(ENTRY_POINTS, key=len, reverse=True):
    if command == program or command.startswith(program + ' '):
      return program
  return None


def classification_problems(page):
  """What keeps a page's commands from being in exactly one category (empty if nothing)."""
  problems = []
  commands = shell_commands(page)
  for command, reason in commands:
    if reason is not None and excuse(command):
      problems.append(f'{page.name}: marked and excused by NOT_RUN: {command}')
    elif reason == '':
      problems.append(f'{page.name}: marked without a reason: {command}')
    elif not excuse(command) and not entry_point(command):
      problems.append(f'{page.name}: neither runnable, marked nor excused: {command}')
  if len(markers(page)) != sum(reason is not None for _, reason in commands):
    problems.append(f'{page.name}: a "# not run by the tests:" line is not directly above a '
                    'command')
  return problems


def test_every_documented_command_is_runnable_marked_or_excused():
  problems = [problem for page in PAGES for problem in classification_problems(page)]
  assert not problems, ('mark each command (# not run by the tests: <reason>), add it to '
                        f'ENTRY_POINTS or NOT_RUN: {problems}')


def test_every_excuse_is_used():
  """A NOT_RUN prefix that no documented command has any more is dead: remove it."""
  commands = [command for page in PAGES for command, _ in shell_commands(page)]
  unused = [prefix for prefix in NOT_RUN if not any(c.startswith(prefix) for c in commands)]
  assert not unused, f'NOT_RUN prefixes that match no documented command: {unused}'


def test_markers_apply_to_the_command_directly_below_and_need_a_reason(tmp_path):
  page = tmp_path / 'page.md'
  page.write_text('```bash\n'
                  '# Pretraining\n'
                  '# not run by the tests: needs a TPU\n'
                  'simclr-tf2 --flagfile=imagenet_r50_pretrain \\\n'
                  '    --tpu_name=$TPU_NAME\n'
                  'simclr-tf2-embed --source=runs/x   # runs\n'
                  '# not run by the tests:\n'
                  'simclr-tf2 --mode=eval\n'
                  '# not run by the tests: a comment follows\n'
                  '# another comment\n'
                  'simclr-tf2 --mode=train\n'
                  '# not run by the tests: excused anyway\n'
                  'pip install simclr_tf2\n'
                  'make all\n'
                  '```\n', encoding='utf-8')
  assert shell_commands(page) == [
      ('simclr-tf2 --flagfile=imagenet_r50_pretrain      --tpu_name=$TPU_NAME', 'needs a TPU'),
      ('simclr-tf2-embed --source=runs/x', None), ('simclr-tf2 --mode=eval', ''),
      ('simclr-tf2 --mode=train', None), ('pip install simclr_tf2', 'excused anyway'),
      ('make all', None)]
  assert classification_problems(page) == [
      'page.md: marked without a reason: simclr-tf2 --mode=eval',
      'page.md: marked and excused by NOT_RUN: pip install simclr_tf2',
      'page.md: neither runnable, marked nor excused: make all',
      'page.md: a "# not run by the tests:" line is not directly above a command']


# --- marked commands: flags only ---------------------------------------------------------------

# An unknown flag or bad value (absl), a missing recipe, an invalid Config or extra arguments.
FLAG_ERRORS = (flags.Error, recipes.RecipeError, ValueError)


def check_flags(command):
  """Parses a marked command with its own command's flags; raises for an unknown flag, a bad
  value, a missing recipe or an invalid training Config."""
  program = entry_point(command)
  module = ENTRY_POINTS[program]
  words = command[len(program):].replace('$', 'DUMMY_')  # $TPU_NAME: a word for the parser
  args = [arg for arg in shlex.split(words) if arg != '...']
  values = command_line.new_flag_values(FLAG_DEFINITIONS[module])
  remaining = values(recipes.expand_flagfiles([program] + args))
  if len(remaining) > 1:
    raise ValueError(f'unexpected arguments: {" ".join(remaining[1:])}')
  if module == 'simclr_tf2.run':
    config_flags.config_from_flags(values)


def test_marked_commands_have_valid_flags():
  marked = [(page.name, command) for page in PAGES for command, reason in shell_commands(page)
            if reason and entry_point(command)]
  assert marked, 'no marked command found: is the marker spelled as in MARKER?'
  problems = []
  for page, command in marked:
    try:
      check_flags(command)
    except FLAG_ERRORS as error:
      problems.append(f'{page}: {command}: {one_line(error)}')
  assert not problems, problems


@pytest.mark.parametrize('command', [
    'simclr-tf2 --no_such_flag=1',
    'simclr-tf2 --resnet_depth=17',
    'simclr-tf2 --flagfile=no_such_recipe',
    'simclr-tf2 --train_mode=pretrain --fine_tune_after_block=4',
    'simclr-tf2 --flagfile=cifar10_pretrain extra',
    'simclr-tf2-embed --no_such_flag=1',
    'simclr-export-saved-model --torchvision',
    'simclr-convert-to-pytorch --checkpoint',
])
def test_the_flag_check_rejects_unknown_flags_bad_values_and_missing_recipes(command):
  with pytest.raises(FLAG_ERRORS):
    check_flags(command)


# --- commands that run as written --------------------------------------------------------------

def _write_images(folder, count, seed):
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True, exist_ok=True)
  for index in range(count):
    pixels = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / f'{index:03d}.png')


def _run(args, cwd):
  """Runs `python -m MODULE ARGS` in this process (the module's in-process entry point, under
  the default one-device strategy), from `cwd`; fails with the command's error output."""
  module, argv = args[1], [args[1]] + list(args[2:])
  err = io.StringIO()
  previous = os.getcwd()
  os.chdir(cwd)
  try:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
      code = IN_PROCESS[module](argv)
  finally:
    os.chdir(previous)
  assert code == 0, (args, err.getvalue()[-3000:])


@pytest.fixture(scope='session')
def stand_ins(tmp_path_factory):
  root = tmp_path_factory.mktemp('reader_files')
  _write_images(root / 'my_images' / 'train', 24, seed=0)
  for split in ('train', 'test', 'validation'):
    for label in ('cats', 'dogs'):
      _write_images(root / 'my_labeled_images' / split / label, 8, seed=hash((split, label)) % 99)
  values = {'/data/my_images': root / 'my_images',
            '/data/my_labeled_images': root / 'my_labeled_images'}
  values['r18'] = root / 'r18_run'
  _run(['-m', 'simclr_tf2.run', f'--model_dir={values["r18"]}'] + TINY_RUN, cwd=root)
  values['saved_model'] = next((values['r18'] / 'saved_model').iterdir())
  # The released checkpoints' layout (model and global_step), untrained: a training run of a
  # ResNet-50 would take a minute. 40 px gives the ImageNet stem, which torchvision's layout needs.
  values['r50'] = root / 'r50_checkpoint'
  model = build_model(10, resnet_depth=50, image_size=40).create_variables()
  tf.train.Checkpoint(model=model, global_step=tf.Variable(1, dtype=tf.int64)).write(
      str(values['r50'] / 'ckpt-1'))
  return values


def concrete(command, stand_in):
  """The command as python arguments, the reader's files replaced by their stand-ins."""
  program = entry_point(command)
  replaced = []
  for arg in shlex.split(command[len(program):]):
    name, _, value = arg.partition('=')
    if value.startswith('/checkpoints/') or value == 'MODEL_DIR':
      value = str(stand_in['r50' if value.startswith('/checkpoints/r50') else 'r18'])
    elif value.startswith('/saved_models/'):
      value = str(stand_in['saved_model'])
    for placeholder in ('/data/my_labeled_images', '/data/my_images'):
      value = value.replace(placeholder, str(stand_in[placeholder]))
    replaced.append(f'{name}={value}' if value else arg)
  return ['-m', ENTRY_POINTS[program]] + replaced


@pytest.mark.slow
@pytest.mark.parametrize('page', [p for p in PAGES if any(
    reason is None and not excuse(c) for c, reason in shell_commands(p))], ids=lambda p: p.name)
def test_documented_commands_run(page, stand_ins, tmp_path):
  for path, stand_in in PAGE_OUTPUTS.get(page.name, {}).items():
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).symlink_to(stand_ins[stand_in], target_is_directory=True)
  for command, reason in shell_commands(page):
    if reason is None and not excuse(command):
      _run(concrete(command, stand_ins), cwd=tmp_path)
