"""The documentation's Python examples run as written (those marked as executed)."""

import re

import pytest

from golden_data import REPO

MARK = '<!-- executed by tests/e2e/test_docs.py -->'


def marked_python_blocks(path):
  text = path.read_text(encoding='utf-8')
  return re.findall(re.escape(MARK) + r'\n```python\n(.*?)\n```', text, flags=re.S)


API_BLOCKS = marked_python_blocks(REPO / 'docs' / 'api.md')


def test_api_page_has_executed_examples():
  assert len(API_BLOCKS) == 2


@pytest.mark.slow
@pytest.mark.parametrize('index', range(len(API_BLOCKS)))
def test_api_example_runs(index, tmp_path, capsys):
  code = API_BLOCKS[index].replace('/tmp/simclr_api_example', str(tmp_path / 'run'))
  exec(compile(code, f'docs/api.md example {index + 1}', 'exec'), {})  # pylint: disable=exec-used
  printed = capsys.readouterr().out
  if index == 0:
    assert '(2, 512)' in printed
    assert (tmp_path / 'run' / 'saved_model' / '4').is_dir()
  else:
    assert 'train/contrast_loss' in printed
