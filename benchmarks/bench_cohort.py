"""Phantom generation time for a profile, from scratch, on all cores.

Usage: python benchmarks/bench_cohort.py --profile demo
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_result
from utils.cohort.generate import generate_cohort
from utils.config import get_profile


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    profile = get_profile(args.profile)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        generate_cohort(profile, Path(folder), workers=args.workers, progress=False)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        generate_cohort(profile, Path(folder), workers=args.workers, progress=False)
        verify = time.perf_counter() - start
    peak_mb = max(resource.getrusage(who).ru_maxrss for who in
                  (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
    result = {"profile": profile.name, "patients": profile.n_patients, "workers": args.workers,
              "generate_s": cold, "patients_per_min": profile.n_patients / cold * 60,
              "verify_existing_s": verify, "peak_rss_mb_per_process": peak_mb}
    print(f"{profile.name}: {profile.n_patients} patients generated in {cold:.1f} s "
          f"({result['patients_per_min']:.0f}/min, {args.workers} workers); "
          f"re-run verifying existing files {verify:.1f} s; peak RSS {peak_mb:.0f} MB")
    write_result(f"bench_cohort_{profile.name}", result)


if __name__ == "__main__":
    main()
