"""Moved to simclr_tf2.network.detect (architecture detection is part of reading a network's
variables); this old path keeps working with a warning and will be removed in a later release."""

import warnings

from simclr_tf2.network.detect import *  # noqa: F401,F403  pylint: disable=wildcard-import
from simclr_tf2.network.detect import detect_architecture  # noqa: F401

warnings.warn('checkpoints_conversion.detect moved to simclr_tf2.network.detect', FutureWarning,
              stacklevel=2)
