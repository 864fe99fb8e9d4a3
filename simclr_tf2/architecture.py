"""Facts about the official SimCLR architecture and its checkpoint layout, in one place.

Shared by the Keras model (resnet.py, heads.py, config.py, checkpoint.py) and by the TensorFlow-free
checkpoint tools (checkpoints_conversion/detect.py, torch_resnet.py). Pure Python: importing this
module loads neither TensorFlow nor torch. Background: docs/architecture-notes.md.
"""

# ResNet depth -> blocks in each of the four block groups.
BLOCK_COUNTS = {
    18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3),
    101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3),
}
RESNET_DEPTHS = tuple(BLOCK_COUNTS)
BOTTLENECK_MIN_DEPTH = 50  # this depth and deeper use bottleneck blocks, shallower residual ones
BLOCK_GROUP_STRIDES = (1, 2, 2, 2)  # stride of the first block of each group
BN_EPSILON = 1e-5  # every batch-norm layer, encoder and heads
SK_MIN_DIM = 32  # minimum width of the Selective-Kernel attention bottleneck
PROJ_HEAD_MODES = ('none', 'linear', 'nonlinear')
# image_size at or below which the CIFAR stem (and the CIFAR eval preprocessing) is used.
CIFAR_MAX_IMAGE_SIZE = 32

# Checkpoint keys: `model/<attribute path>/.ATTRIBUTES/VARIABLE_VALUE`; optimizer slots insert
# `/.OPTIMIZER_SLOT/optimizer/<slot>` after the variable's path.
MODEL_PREFIX = 'model/'
VALUE_SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'
SLOT_MARKER = '/.OPTIMIZER_SLOT/'
STEM_PATH = 'resnet_model/initial_conv_relu_max_pool/'  # below MODEL_PREFIX

# Config fields a checkpoint's variable shapes determine, 1:1 (`cifar_stem` follows from
# image_size); loading.load_model and the conversion tools detect them.
DETECTED_FLAGS = ('resnet_depth', 'width_multiplier', 'sk_ratio', 'se_ratio', 'image_size',
                  'proj_head_mode', 'num_proj_layers', 'proj_out_dim', 'ft_proj_selector')
