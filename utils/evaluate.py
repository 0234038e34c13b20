"""Short entry point named in the docs: ``python -m utils.evaluate`` runs
:func:`utils.evaluation.cli.main` (as ``python -m utils.evaluation`` does)."""

if __name__ == "__main__":
    from utils.evaluation.cli import main

    raise SystemExit(main())
