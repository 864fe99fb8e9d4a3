"""errors: one-line messages and OS failures turned into one-line FileSystemErrors."""

import os
import sys

import pytest
import tensorflow as tf

from simclr_tf2 import errors
from simclr_tf2.errors import FileSystemError, SimCLRError, one_line


@pytest.mark.parametrize('error,expected', [
    (ValueError(''), 'ValueError'),
    (ValueError('   \n\n  '), 'ValueError'),
    (ValueError('\n  first\nsecond'), 'first'),
    (ValueError('model mismatch:\nmissing (2):\n  a\n  b\nextra (1):\n  c'),
     'model mismatch: missing (2): a, b, extra (1): c'),
    (KeyError(), 'KeyError'),
    (tf.errors.NotFoundError(None, None, 'no file x\n\t [[{{node Restore}}]]'), 'no file x'),
])
def test_one_line_is_the_first_non_empty_line(error, expected):
  assert one_line(error) == expected


def test_one_line_is_bounded():
  text = one_line(ValueError('x' * 2000), limit=50)
  assert text == 'x' * 47 + '...'


def test_os_errors_names_the_operation_path_and_reason(tmp_path):
  a_file = tmp_path / 'file'
  a_file.write_text('')
  target = a_file / 'sub'
  with pytest.raises(FileSystemError) as error:
    with errors.os_errors('create model_dir', target):
      os.makedirs(target)
  assert str(error.value) == (f'cannot create model_dir {target}: a part of the path is a file, '
                              'not a directory')
  assert isinstance(error.value, (SimCLRError, OSError))


def test_os_errors_reads_tensorflow_file_errors(tmp_path):
  a_file = tmp_path / 'file'
  a_file.write_text('')
  with pytest.raises(FileSystemError, match=f'^cannot write {a_file}/x: '):
    with errors.os_errors('write', f'{a_file}/x'):
      with tf.io.gfile.GFile(f'{a_file}/x', 'w') as f:
        f.write('y')


def test_os_errors_lets_other_errors_through():
  with pytest.raises(ZeroDivisionError):
    with errors.os_errors('save', '/x'):
      1 / 0  # pylint: disable=pointless-statement


@pytest.mark.parametrize('code,reason', [(28, 'no space left on the device (disk full)'),
                                         (30, 'read-only file system'),
                                         (13, 'permission denied')])
def test_os_failure_reasons(code, reason):
  assert errors.os_failure_reason(OSError(code, os.strerror(code))) == reason
  # TensorFlow reports the OS text instead of the errno
  assert errors.os_failure_reason(
      tf.errors.UnknownError(None, None, f'x; {os.strerror(code)}')) == reason




def test_conversion_without_pytorch_is_one_line(monkeypatch, capsys, tmp_path):
  """simclr-convert-to-pytorch on a base install (no torch): one line naming what to install."""
  import checkpoints_conversion  # pylint: disable=import-outside-toplevel
  from checkpoints_conversion import convert_to_pytorch  # pylint: disable=import-outside-toplevel
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` fails
  for module in ('tf_to_torch', 'torch_resnet'):  # as if never imported in this process
    monkeypatch.delitem(sys.modules, f'checkpoints_conversion.{module}', raising=False)
    monkeypatch.delattr(checkpoints_conversion, module, raising=False)
  code = convert_to_pytorch.run(['prog', '--checkpoint=/nonexistent',
                                 f'--output={tmp_path / "weights.pth"}'])
  err = capsys.readouterr().err
  assert code == 1 and err.count('\n') == 1, err
  assert err.startswith('error: conversion to PyTorch needs PyTorch') and \
      'pip install torch safetensors' in err
  assert not (tmp_path / 'weights.pth').exists()
