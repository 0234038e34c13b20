"""``python -m utils.cohort``: generate the phantom cohort (:mod:`utils.cohort.generate`)."""

from utils.cohort.generate import main

raise SystemExit(main())
