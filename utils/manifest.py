"""Old entry point, kept working: ``python -m utils.manifest`` runs
:func:`utils.cohort.validate.main`."""

if __name__ == "__main__":
    from utils.cohort.validate import main

    raise SystemExit(main())
