"""Old entry point, kept working: ``python -m utils.preprocess`` runs :func:`utils.preprocessing.cache.main`."""

if __name__ == "__main__":
    from utils.preprocessing.cache import main

    raise SystemExit(main())
