"""The package's user-facing errors: each message is one line an entry point prints as is."""


class SimCLRError(Exception):
  """Base of every one-line error of simclr_tf2."""


class TrainingError(SimCLRError, RuntimeError):
  """Training cannot go on (e.g. the loss became NaN); checkpoints written so far are kept."""


def one_line(error: BaseException, limit: int = 500) -> str:
  """The first non-empty line of an error's message (its type name if it has none)."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  text = lines[0] if lines else type(error).__name__
  return text if len(text) <= limit else text[:limit - 3] + '...'
