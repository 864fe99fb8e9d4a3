"""simclr_tf2: SimCLR v1/v2 in TensorFlow 2 + Keras 2 (tf_keras), checkpoint-compatible with
google-research/simclr `tf2/`."""

import os

# Make `tf.keras` resolve to Keras 2 too, for users mixing it with this package (the package itself
# always imports `tf_keras`). Has no effect if TensorFlow was imported first.
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

__version__ = '0.1.0'
