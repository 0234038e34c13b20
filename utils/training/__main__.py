"""``python -m utils.training``: train and predict from a terminal (:mod:`utils.training.cli`)."""

from utils.training.cli import main

raise SystemExit(main())
