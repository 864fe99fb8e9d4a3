"""Recipes: the flagfiles of the repository's `flags/` folder, shipped inside the package.

A recipe is named by its file name, with or without `.cfg` (`--flagfile=cifar10_pretrain`), or
given as a path. `expand_flagfiles` replaces `--flagfile` arguments by the flags of their files
before absl parses them, so that a `--flagfile=` line inside a file resolves relative to that
file's directory (absl itself resolves it against the working directory) and recipes work from
any directory. File syntax is absl's: one flag per line; blank lines and lines starting with `#`
or `//` are ignored; an empty `--flagfile=` is ignored.
"""

import os
import pathlib
import sys
from typing import List, Optional, Sequence

from absl import flags

from simclr_tf2.errors import SimCLRError, one_line

SUFFIX = '.cfg'
# A wheel installs flags/ here (setup.py); a source checkout or an editable install has only the
# top-level folder, so the recipes exist in one copy.
_PACKAGED_DIR = pathlib.Path(__file__).resolve().parent / 'flagfiles'
_CHECKOUT_DIR = pathlib.Path(__file__).resolve().parents[1] / 'flags'
_DIRECTIVES = ('--flagfile', '-flagfile')


class RecipeError(SimCLRError, ValueError):
  """A flagfile that cannot be found or read, or that includes itself (one-line message)."""


def recipes_dir() -> pathlib.Path:
  """The folder holding the packaged recipes."""
  return _PACKAGED_DIR if _PACKAGED_DIR.is_dir() else _CHECKOUT_DIR


def list_recipes() -> List[str]:
  """Names of the packaged recipes (file names without `.cfg`), sorted."""
  return sorted(path.stem for path in recipes_dir().glob('*' + SUFFIX))


def recipe_path(name_or_path: str, relative_to: Optional[str] = None) -> str:
  """Absolute path of an existing flagfile, else of the packaged recipe of that name.

  A relative path is taken relative to `relative_to` (default: the working directory).
  """
  path = os.path.expanduser(name_or_path)
  candidate = os.path.join(relative_to, path) if relative_to else path
  if os.path.isfile(candidate):
    return os.path.abspath(candidate)
  if os.path.basename(path) == path:  # a bare name may be a packaged recipe
    packaged = recipes_dir() / (path if path.endswith(SUFFIX) else path + SUFFIX)
    if packaged.is_file():
      return str(packaged)
  where = f'{relative_to}/' if relative_to else ''
  raise RecipeError(f'flagfile not found: {where}{name_or_path} is not a file and not a '
                    f'packaged recipe ({", ".join(list_recipes())})')


def _flagfile_argument(arg: str) -> Optional[str]:
  """The file of a `--flagfile=X` / `-flagfile=X` argument, else None."""
  for directive in _DIRECTIVES:
    if arg.startswith(directive + '='):
      return arg[len(directive) + 1:].strip()
  return None


def _read_flagfile(path: str, including: Sequence[str]) -> List[str]:
  """The flag lines of `path`, nested flagfiles expanded; `including` = the files above it."""
  if path in including:
    raise RecipeError(f'flagfile cycle: {" -> ".join(list(including) + [path])}')
  try:
    with open(path, encoding='utf-8') as file:
      lines = file.read().splitlines()
  except OSError as error:
    raise RecipeError(f'cannot read flagfile {path}: {error.strerror}') from None
  result = []
  for line in lines:
    line = line.strip()
    if not line or line.startswith(('#', '//')):
      continue
    nested = _flagfile_argument(line)
    if nested is None:
      result.append(line)
    elif nested:
      result += _read_flagfile(recipe_path(nested, relative_to=os.path.dirname(path)),
                               [*including, path])
  return result


def expand_flagfiles(argv: Sequence[str]) -> List[str]:
  """`argv` with every `--flagfile=X` (or `--flagfile X`) replaced by the flags of file X.

  X is a path or a packaged recipe name; nested `--flagfile=` lines resolve relative to the
  directory of the file that contains them, then as packaged names. Arguments after `--` are
  kept as they are. Raises RecipeError for a missing file or a cycle.
  """
  result, rest = [], list(argv)
  while rest:
    arg = rest.pop(0)
    if arg == '--':
      return result + [arg] + rest
    name = _flagfile_argument(arg)
    if arg in _DIRECTIVES:
      if not rest:
        raise RecipeError(f'{arg} needs a file name')
      name = rest.pop(0)
    if name is None:
      result.append(arg)
    elif name:  # like absl, an empty --flagfile= is ignored
      result += _read_flagfile(recipe_path(name), [])
  return result


def flags_parser(flag_values: flags.FlagValues):
  """A parser for `absl.app.run(main, flags_parser=...)`: expands recipes, then parses
  `flag_values`; bad input exits with one `error: ...` line."""

  def parse(argv):
    try:
      return flag_values(expand_flagfiles(argv))
    except (RecipeError, flags.Error) as error:
      sys.exit(f'error: {one_line(error)}')

  return parse


HELP_ARGUMENTS = frozenset({'-h', '-?', '--help', '--helpshort', '--helpfull'})


def own_flags_parser(flag_values: flags.FlagValues):
  """flags_parser for an entry point with its own FlagValues instead of absl's global FLAGS;
  absl's own flags are parsed too (keeping their defaults), as `app.run` needs them."""
  parse = flags_parser(flag_values)

  def parse_own(argv):
    if HELP_ARGUMENTS.intersection(argv[1:]):  # absl defines these on its global FLAGS only
      print(f'usage: {os.path.basename(argv[0])} [flags]\n{flag_values.get_help()}')
      sys.exit(0)
    remaining = parse(argv)
    flags.FLAGS(argv[:1])
    return remaining

  return parse_own
