"""Stage 03, training: patient data, augmentation, the resumable fit, the readout, model card.

Reads the cache and the manifest; writes ``runs/<profile>/`` (``models/<run>.keras`` with its
model card, ``logs/<run>/training.csv``, checkpoints, out-of-fold readout scores) and
``results/split.csv``, ``results/folds.csv``.
"""
