"""Stage 02, the network: 3D RP-Net's layers, the builder and its variants, FLOP counts.

Reads and writes nothing the other stages need: :mod:`utils.training` builds the network
from here.
"""
