"""``python -m utils.preprocessing``: preprocess a manifest into the cache."""

from utils.preprocessing.cli import main

raise SystemExit(main())
