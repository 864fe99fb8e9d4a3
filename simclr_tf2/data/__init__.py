"""Data: sources of decoded examples (sources.py), augmentations (augment.py) and the
distributed input pipeline (pipeline.py). The names users need are importable from here."""

from simclr_tf2.data.pipeline import (TRAIN_MODES, build_distributed_dataset, build_input_fn,
                                      distributed_dataset)
from simclr_tf2.data.sources import (CorruptImageError, DigitsSource, ImageFolderSource,
                                     TfdsSource, corrupt_image_errors, get_source)

__all__ = ['TRAIN_MODES', 'CorruptImageError', 'DigitsSource', 'ImageFolderSource', 'TfdsSource',
           'build_distributed_dataset', 'build_input_fn', 'corrupt_image_errors',
           'distributed_dataset', 'get_source']
