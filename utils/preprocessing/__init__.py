"""Stage 01, preprocessing: bias correction, resampling, registration, normalisation, ROI.

Reads the manifest's images and masks; writes the cache (``data/cache/<profile>/``: one
``<patient>.npz`` + ``.json`` + ``.tfm`` per patient and ``processed.csv``). Later stages
read the cache only through :func:`utils.preprocessing.cache.load_cached`.
``python -m utils.preprocessing`` preprocesses a manifest.
"""
