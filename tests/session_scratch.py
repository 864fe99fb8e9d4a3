"""One scratch folder per test process for caches built once per session (exports, released-style
SavedModels). It lives under pytest's temporary root, which pytest prunes to its last three
sessions, so a test process killed mid-session (an xdist worker, a timeout) leaves no orphan
folder in /tmp, as tempfile.mkdtemp + atexit did."""

import pathlib
from typing import Optional

_root: Optional[pathlib.Path] = None


def set_root(path: pathlib.Path) -> None:
  global _root  # pylint: disable=global-statement
  _root = path


def folder(name: str) -> str:
  """`name` under this session's scratch root (conftest.py sets it before any test runs)."""
  if _root is None:
    raise RuntimeError('session_scratch: the root is set by tests/conftest.py')
  path = _root / name
  path.mkdir(parents=True, exist_ok=True)
  return str(path)
