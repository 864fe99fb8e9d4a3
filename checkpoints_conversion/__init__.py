"""Conversion of simclr_tf2 / official SimCLR TF2 checkpoints to PyTorch."""
