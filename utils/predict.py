"""Old entry point, kept working: ``python -m utils.predict`` runs
:func:`utils.inference.predict.main`."""

if __name__ == "__main__":
    from utils.inference.predict import main

    raise SystemExit(main())
