"""Every shell command shown in README.md and docs/*.md runs, with tiny settings, so the docs
cannot rot.

The commands of one page run in order in one empty working directory (a later command may use
what an earlier one wrote, as a reader would). Placeholders the pages use for the reader's own
files are replaced by small stand-ins made here:
  /data/my_images            an unlabeled image folder (data_dir/train/*.png)
  /data/my_labeled_images    a labeled image folder (data_dir/<split>/<class>/*.png)
  /data/tfds                 a prepared TFDS folder: the run uses the embedded digits instead
  /checkpoints/r50...        an official-layout ResNet-50 checkpoint
  /checkpoints/...           an official-layout ResNet-18 checkpoint (any other name)
  /saved_models/simclrv1...  a SavedModel without projection head, as the SimCLR v1 releases
                             (--proj_head_mode=none; ResNet-18)
  /saved_models/...          a SavedModel exported from that checkpoint
  /tmp/X, gs://BUCKET/.../X  a run directory (--model_dir, --checkpoint, --teacher_checkpoint;
                             also in recipes):
                             ./doc_runs/X; a gs:// --data_dir is a prepared TFDS folder
Each command runs in this process through the in-process entry point of its module (the same
parser, checks and action as its console script), under the default one-device strategy.
Training commands get tiny-run flags appended (absl: the last value of a flag wins). Commands
that cannot run in a test are listed in NOT_RUN with the reason; any other command fails the
test, so a new command is either runnable or explicitly excused.
"""

import contextlib
import io
import os
import re
import shlex

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from golden_data import REPO
from checkpoints_conversion import convert_to_pytorch, export_saved_model
from simclr_tf2 import embed, recipes
from simclr_tf2 import run as run_command

PAGES = [REPO / 'README.md'] + sorted((REPO / 'docs').glob('*.md'))

NOT_RUN = {  # command prefix: why no test runs it
    'pip install': 'installs packages: .ci/run runs the README install commands',
    'python -m pytest': 'the test suite itself (.ci/run)',
    'python -m simclr_tf2.demo': 'the demo: .ci/run runs it from the built wheel',
    'tfds build': 'downloads a dataset (no network in tests)',
    'tensorboard': 'starts a web server',
    'python bench/': 'benchmarks take minutes and assert nothing: run by hand',
    'bash .ci/run': 'CI itself',
    'TF_CONFIG=': 'one worker of a cluster: tests/e2e/test_distributed_doc.py runs the loopback '
                  'cluster of docs/distributed.md as written',
    'CLUSTER=': 'a shell variable of the loopback cluster (tests/e2e/test_distributed_doc.py)',
    'FLAGS=': 'a shell variable of the loopback cluster (tests/e2e/test_distributed_doc.py)',
    'wait': 'waits for the loopback cluster\'s background worker '
            '(tests/e2e/test_distributed_doc.py)',
    'srun': 'needs a SLURM cluster',
    'sbatch': 'needs a SLURM cluster',
    'export ': 'sets a shell variable for the commands that follow',
}
ENTRY_POINTS = {  # program as written -> python arguments
    'simclr-tf2': ['-m', 'simclr_tf2.run'],
    'python -m simclr_tf2.run': ['-m', 'simclr_tf2.run'],
    'simclr-export-saved-model': ['-m', 'checkpoints_conversion.export_saved_model'],
    'python -m checkpoints_conversion.export_saved_model':
        ['-m', 'checkpoints_conversion.export_saved_model'],
    'simclr-convert-to-pytorch': ['-m', 'checkpoints_conversion.convert_to_pytorch'],
    'python -m checkpoints_conversion.convert_to_pytorch':
        ['-m', 'checkpoints_conversion.convert_to_pytorch'],
    'simclr-tf2-embed': ['-m', 'simclr_tf2.embed'],
    'python -m simclr_tf2.embed': ['-m', 'simclr_tf2.embed'],
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
TINY_TRAINING = ['--use_tpu=false', '--train_steps=2', '--checkpoint_steps=1', '--eval_steps=1',
                 '--train_batch_size=8', '--eval_batch_size=8', '--image_size=8',
                 '--resnet_depth=18', '--width_multiplier=1', '--sk_ratio=0', '--se_ratio=0',
                 '--eval_timeout=1', '--use_blur=false']
RUN_DIR_FLAGS = ('--model_dir', '--checkpoint', '--teacher_checkpoint')
TINY_EMBEDDING = ['--max_examples=24', '--batch_size=8']


def shell_commands(page):
  """Commands of the page's ```bash blocks: continuation lines joined, comments dropped."""
  commands = []
  for block in re.findall(r'```bash\n(.*?)```', page.read_text(encoding='utf-8'), flags=re.S):
    for line in block.replace('\\\n', ' ').splitlines():
      line = line.split(' #', 1)[0].strip()
      if line and not line.startswith('#'):
        commands.append(line)
  return commands


def excuse(command):
  return next((why for prefix, why in NOT_RUN.items() if command.startswith(prefix)), None)


def entry_point(command):
  for program in sorted(ENTRY_POINTS, key=len, reverse=True):
    if command == program or command.startswith(program + ' '):
      return program
  return None


def test_every_documented_command_is_runnable_or_excused():
  unknown = [(page.name, command) for page in PAGES for command in shell_commands(page)
             if not excuse(command) and not entry_point(command)]
  assert not unknown, f'add to ENTRY_POINTS or NOT_RUN (with the reason): {unknown}'


# --- stand-ins for the reader's files --------------------------------------------------------

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


@pytest.fixture(scope='module')
def stand_ins(tmp_path_factory):
  root = tmp_path_factory.mktemp('reader_files')
  _write_images(root / 'my_images' / 'train', 24, seed=0)
  for split in ('train', 'test', 'validation'):
    for label in ('cats', 'dogs'):
      _write_images(root / 'my_labeled_images' / split / label, 8, seed=hash((split, label)) % 99)
  values = {'/data/my_images': root / 'my_images',
            '/data/my_labeled_images': root / 'my_labeled_images'}
  # ResNet-50 at 40 px: the ImageNet stem, which the torchvision layout needs.
  for depth, size in ((18, 8), (50, 40)):
    run_dir = root / f'r{depth}_run'
    _run(['-m', 'simclr_tf2.run', '--dataset=digits', '--mode=train', f'--model_dir={run_dir}']
         + TINY_TRAINING + [f'--resnet_depth={depth}', f'--image_size={size}', '--train_steps=1'],
         cwd=root)
    values[f'r{depth}'] = run_dir
  values['saved_model'] = next((root / 'r18_run' / 'saved_model').iterdir())
  # A SimCLR v1 release has no projection head (docs/transfer.md: --proj_head_mode=none).
  v1_run = root / 'v1_run'
  _run(['-m', 'simclr_tf2.run', '--dataset=digits', '--mode=train', f'--model_dir={v1_run}',
        '--proj_head_mode=none'] + TINY_TRAINING + ['--train_steps=1'], cwd=root)
  values['v1_saved_model'] = next((v1_run / 'saved_model').iterdir())
  return values


def _local_run_dirs(args):
  """A recipe's --model_dir and --checkpoint (/tmp/X, gs://BUCKET/.../X) as ./doc_runs/X, unless
  the command gives them: runs stay in the test's folder, and a linear evaluation still finds
  the pretraining run its recipe names."""
  given = {arg.partition('=')[0] for arg in args}
  recipe_values = {}
  for arg in recipes.expand_flagfiles([arg for arg in args if arg.startswith('--flagfile=')]):
    name, _, value = arg.partition('=')
    if name in RUN_DIR_FLAGS and name not in given:
      recipe_values[name] = f'{name}={_local_run_dir(value)}'
  return list(recipe_values.values())


def _local_run_dir(path):
  return 'doc_runs/' + path.rstrip('/').rsplit('/', 1)[-1]


def concrete(command, stand_ins_values):
  """The command with placeholders replaced and tiny settings appended, as python arguments."""
  program = entry_point(command)
  args = shlex.split(command[len(program):])
  args = [arg for arg in args if arg != '...']  # "and so on" in an example
  uses_tfds = any('/data/tfds' in arg or arg.startswith('--data_dir=gs://') for arg in args)
  module = ENTRY_POINTS[program][1]
  training = module == 'simclr_tf2.run'  # tiny R18 settings: start from the R18 checkpoint
  replaced = []
  for arg in args:
    name, _, value = arg.partition('=')
    if value.startswith('/checkpoints/') or value in ('...', 'MODEL_DIR'):
      r50 = value.startswith('/checkpoints/r50') and not training
      value = str(stand_ins_values['r50' if r50 else 'r18'])
    elif value.startswith('/saved_models/simclrv1'):
      value = str(stand_ins_values['v1_saved_model'])
    elif value.startswith('/saved_models/'):
      value = str(stand_ins_values['saved_model'])
    elif name in RUN_DIR_FLAGS and value.startswith(('/tmp/', 'gs://')):
      value = _local_run_dir(value)
    for placeholder in ('/data/my_labeled_images', '/data/my_images'):
      value = value.replace(placeholder, str(stand_ins_values[placeholder]))
    replaced.append(f'{name}={value}' if value else arg)
  if training:
    replaced += TINY_TRAINING
    replaced += _local_run_dirs(args)
    if uses_tfds or not any(arg.startswith('--data_dir=') for arg in args):
      # The digits stand in for the TFDS dataset, with their own split names (no `train[:1%]`).
      replaced += ['--dataset=digits', '--data_dir=', '--train_split=train', '--eval_split=test']
  elif module == 'simclr_tf2.embed':
    replaced += TINY_EMBEDDING
    if uses_tfds:
      replaced += ['--dataset=digits', '--data_dir=']
  return ENTRY_POINTS[program] + replaced


@pytest.mark.slow
@pytest.mark.parametrize('page', [p for p in PAGES if any(
    not excuse(c) for c in shell_commands(p))], ids=lambda p: p.name)
def test_documented_commands_run(page, stand_ins, tmp_path):
  for command in shell_commands(page):
    if excuse(command) or not entry_point(command):
      continue
    _run(concrete(command, stand_ins), cwd=tmp_path)
