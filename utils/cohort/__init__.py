"""Stage 00, the cohort: the manifest and its checks, the phantom, Table 1.

Reads ``data_manifest.csv`` (or writes the phantom's) and the images it lists; writes the
phantom cohort (``data/phantom/<profile>/``: images, masks, ``manifest.csv``, ``oracle.csv``).
Nothing here imports a later stage. ``python -m utils.cohort`` generates the phantom;
``python -m utils.manifest {check,hash}`` (:mod:`utils.cohort.validate`) checks or
hashes a manifest.
"""
