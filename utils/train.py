"""Short entry point named in the docs: ``python -m utils.train`` runs
:func:`utils.training.cli.main` (as ``python -m utils.training`` does)."""

if __name__ == "__main__":
    from utils.training.cli import main

    raise SystemExit(main())
