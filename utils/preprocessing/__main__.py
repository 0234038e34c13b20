"""``python -m utils.preprocessing``: preprocess a manifest into the cache."""

from utils.preprocessing.cache import main

raise SystemExit(main())
