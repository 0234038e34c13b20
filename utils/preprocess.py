"""Old entry point, kept working: ``python -m utils.preprocess`` runs
:func:`utils.preprocessing.cli.main` (as ``python -m utils.preprocessing`` does)."""

if __name__ == "__main__":
    from utils.preprocessing.cli import main

    raise SystemExit(main())
