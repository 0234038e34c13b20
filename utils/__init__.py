"""Helpers for the 3D RP-Net reproduction notebooks (Jin et al., Nat Commun 2021)."""

import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out
