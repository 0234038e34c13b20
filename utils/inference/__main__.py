"""``python -m utils.inference``: predict one patient's pCR probability and tumour masks."""

from utils.inference.predict import main

raise SystemExit(main())
