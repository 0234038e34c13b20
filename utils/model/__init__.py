"""Stage 02, the network: 3D RP-Net's variants, layers, losses, the builder, compiling and
loading, FLOP counts and the figures of notebook 02.

Reads and writes nothing the other stages need: :mod:`utils.training` builds the network
from here (``variants`` is the table of variants, ``rpnet`` the builder, ``compile`` the
optimiser, losses and metrics, ``flops`` and ``diagram`` describe it).
"""
