"""simclr_tf2: SimCLR v1/v2 for TensorFlow 2 + Keras 2, checkpoint-compatible with the official code."""

import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent

setup(
    name='simclr_tf2',
    version='0.1.0',
    description='SimCLR v1/v2 in TensorFlow 2 / Keras 2, compatible with the official tf2 '
                'checkpoints, with SavedModel export and PyTorch conversion.',
    long_description=(HERE / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    license='Apache-2.0',  # as the reference implementation
    packages=find_packages(include=['simclr_tf2', 'simclr_tf2.*', 'checkpoints_conversion',
                                    'checkpoints_conversion.*']) + ['simclr_tf2.flagfiles'],
    # The recipes stay in one copy at the top-level flags/ and install as simclr_tf2/flagfiles/
    # (an editable install reads flags/ itself; see simclr_tf2/recipes.py).
    package_dir={'simclr_tf2.flagfiles': 'flags'},
    package_data={'simclr_tf2.flagfiles': ['*.cfg']},
    python_requires='>=3.9',
    install_requires=[
        # Keras 2 (tf_keras) keeps the official checkpoint object graph; Keras 3 breaks it.
        # tf_keras must match the TensorFlow minor version.
        'tensorflow~=2.21.0',
        'tf_keras~=2.21.0',
        'tensorboard>=2.16',  # tf.summary image/scalar writers (not a TF 2.21 dependency)
        'tensorflow-datasets>=4.9',
        'absl-py>=1.0',
        'numpy>=1.23',
        'scikit-learn>=1.0',  # ships the offline `digits` dataset used by the default run
        'pillow>=9.0',
    ],
    extras_require={
        'torch': ['torch>=2.1', 'safetensors>=0.4'],
        # The plot tests need matplotlib; the export tests load exports with hub.KerasLayer
        # (tensorflow_hub imports pkg_resources, which setuptools 81 removed); pytest-xdist runs
        # the suite in two processes (-n 2); pytest 9.2 silently breaks its xdist_group
        # (pytest-xdist#1386: the group is written into a node id field pytest 9.2 no longer reads).
        'test': ['pytest>=7,<9.2', 'pytest-xdist>=3', 'matplotlib>=3.5', 'tensorflow-hub>=0.16',
                 'setuptools<81'],
        'plots': ['matplotlib>=3.5'],  # PNG t-SNE / PCA / thumbnail maps of embeddings
    },
    entry_points={
        'console_scripts': [
            'simclr-tf2=simclr_tf2.run:run_main',
            'simclr-export-saved-model=checkpoints_conversion.export_saved_model:run_main',
            'simclr-convert-to-pytorch=checkpoints_conversion.convert_to_pytorch:run_main',
            'simclr-tf2-embed=simclr_tf2.embed:run_main',
        ],
    },
)
