"""absl flags defined from `Config`, so every default lives in config.py only.

Used by the entry points (`run.py`, the conversion CLIs); library modules never read flags.
"""

import typing

from absl import flags

from simclr_tf2.config import Config


def _base_type(annotation):
  """int/float/bool/str from a (possibly Optional[...]) field annotation."""
  args = [a for a in typing.get_args(annotation) if a is not type(None)]
  return args[0] if args else annotation


_DEFINERS = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
             str: flags.DEFINE_string}


def define_config_flags(flag_values=flags.FLAGS, names=None):
  """Defines one absl flag per Config field (or per field in `names`), once."""
  hints = typing.get_type_hints(Config)
  for field in Config.fields():
    if (names is not None and field.name not in names) or field.name in flag_values:
      continue
    choices = field.metadata['choices']
    if choices:
      flags.DEFINE_enum(field.name, field.default, list(choices), field.metadata['help'],
                        flag_values=flag_values)
    else:
      _DEFINERS[_base_type(hints[field.name])](
          field.name, field.default, field.metadata['help'], flag_values=flag_values)


def config_from_flags(flag_values=flags.FLAGS) -> Config:
  """A validated Config from parsed flags (ValueError with a one-line message if invalid)."""
  values = {f.name: flag_values[f.name].value for f in Config.fields() if f.name in flag_values}
  return Config.from_kwargs(**values)


def explicitly_set(flag_values=flags.FLAGS):
  """Names of Config flags given on the command line or in a flagfile."""
  return {f.name for f in Config.fields()
          if f.name in flag_values and flag_values[f.name].present}


def markdown_table() -> str:
  """The flag table of docs/training.md: `python -m simclr_tf2.flags` prints it."""
  rows = ['| flag | default | meaning |', '|---|---|---|']
  for field in Config.fields():
    choices = field.metadata['choices']
    meaning = ('/'.join(choices) + '. ' if choices else '') + field.metadata['help']
    rows.append(f'| `{field.name}` | `{field.default!r}` | {meaning} |')
  return '\n'.join(rows)


if __name__ == '__main__':
  print(markdown_table())
