"""The network: the SimCLR Keras model (ResNet, heads, blur) and its variables on disk
(checkpoints in the official layout, SavedModels, architecture detection from shapes)."""
