"""Stage 03, training: the patients and their split, balanced and augmented batches, the
resumable ``model.fit``, the cross-validated readout and the model card.

Reads the cache (and its index ``processed.csv``) and the manifest; writes ``runs/<profile>/``
(``models/<run>.keras`` with its model card, ``logs/<run>/training.csv``, checkpoints,
``readout/<run>.csv`` with the out-of-fold readout scores) and ``results/split.csv``,
``results/folds.csv``. Predicting every patient with the trained runs is the next stage
(:func:`utils.inference.batch.predict_runs`).
"""
