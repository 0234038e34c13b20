"""Old entry point, kept working: ``python -m utils.manifest`` runs :func:`utils.cohort.manifest.main`."""

if __name__ == "__main__":
    from utils.cohort.manifest import main

    raise SystemExit(main())
