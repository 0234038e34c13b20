"""``python -m utils.evaluation``: evaluate a trained run (:mod:`utils.evaluation.cli`)."""

from utils.evaluation.cli import main

raise SystemExit(main())
