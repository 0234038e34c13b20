"""README.md's results table, rewritten from ``metrics.json``, and the figure index.

The README between ``<!-- results:start -->`` and ``<!-- results:end -->`` shows the paper's
AUCs beside the demo profile's phantom run. Only that run's ``metrics.json`` (meta: profile
``demo``, data ``phantom (synthetic)``) is written into it; for any other profile or cohort
the command prints the table and leaves README.md alone (exit status 0)::

    python -m utils.evaluation.report [--profile demo] [--check]

``make readme`` runs it; ``make reproduce`` runs it after the notebooks. ``--check`` writes
nothing and exits with 1 when README.md's table differs from ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from utils import config
from utils.evaluation.labels import (
    HANDCRAFTED,
    IMAGE_ORACLE,
    INTEGRATED,
    MAIN_MODEL,
    MODEL_LABELS,
    ORACLE,
    VALIDATION_COHORTS,
    fmt_ci,
)
from utils.io import write_atomic

README = config.ROOT / "README.md"
README_MARKERS = ("<!-- results:start -->", "<!-- results:end -->")
PHANTOM_DATA = "phantom (synthetic)"

# Paper: Jin et al., Nat Commun 12:1851 (2021), abstract.
PAPER_AUC = {"full": {"internal_validation": (0.95, 0.91, 0.98),
                      "external_validation": (0.92, 0.87, 0.96)},
             INTEGRATED: (0.97, 0.93, 0.99)}

# figure file stem -> (notebook, what it shows, paper analogue)
FIGURES: dict[str, tuple[str, str, str]] = {
    "fig00_example_exams": ("00_data", "example pre/post T2W and DWI exams per centre",
                            "example MRI of responders and non-responders"),
    "fig01_bias_correction": ("01_preprocessing", "T2W before/after N4 and the bias field",
                              "— (added: preprocessing QC)"),
    "fig01_registration_checkerboard": ("01_preprocessing",
                                        "pre/post checkerboard before and after registration",
                                        "— (added: the release did not register)"),
    "fig01_intensity_normalisation": ("01_preprocessing",
                                      "per-centre intensity histograms before/after",
                                      "— (added: preprocessing QC)"),
    "fig01_dwi_clip": ("01_preprocessing", "post-treatment tumour DWI under the former and "
                       "the current clip rule", "—"),
    "fig01_crop_montage": ("01_preprocessing", "final ROI crops with tumour masks",
                           "network inputs"),
    "fig02_architecture": ("02_model", "schematic of the Siamese RP-Net",
                           "network architecture diagram"),
    "fig02_tumour_head": ("02_model", "where the tumour-guided pCR head pools, per join",
                          "— (this package's head)"),
    "fig02_untrained_forward_pass": ("02_model", "one patient through the untrained network",
                                     "— (added)"),
    "fig03_training_curves": ("03_training", "loss, pCR loss, Dice and AUC per epoch (fit / tune)",
                              "— (added)"),
    "fig04_roc": ("04_evaluation", "ROC per cohort, AUC with DeLong 95% CI",
                  "ROC curves of 3D RP-Net in training and validation cohorts"),
    "fig04_pr": ("04_evaluation", "precision-recall curves per cohort", "— (added)"),
    "fig04_ablations": ("04_evaluation", "AUC with CI of ablations and baselines, DeLong p",
                        "comparison with single-task, single-time-point models and "
                        "volume reduction"),
    "fig04_segmentation": ("04_evaluation", "Dice and HD95 per cohort and time point",
                           "segmentation performance (Dice) pre and post treatment"),
    "fig04_overlays": ("04_evaluation", "best, median and worst segmentation on T2W",
                       "example segmentations"),
    "fig04_integrated_roc": ("04_evaluation", "imaging vs integrated model ROC",
                             "ROC of the integrated model with blood tumour markers"),
    "fig04_calibration": ("04_evaluation", "reliability curves and Brier scores",
                          "— (added)"),
    "fig04_decision_curves": ("04_evaluation", "net benefit vs treat-all / treat-none",
                              "— (added)"),
    "fig04_attribution": ("04_evaluation", "input x gradient of the pCR logit on DWI "
                          "(the voxels that drive the prediction)",
                          "visualisation of the regions driving the prediction"),
}


# ----------------------------------------------------------------------------- results table
def _entry(metrics: Mapping, cohort: str, model: str) -> Mapping | None:
    return metrics.get("cohorts", {}).get(cohort, {}).get(model)


def _auc_cell(metrics: Mapping, cohort: str, model: str) -> str:
    entry = _entry(metrics, cohort, model)
    if not entry or entry.get("auc") is None:
        return "n/a"
    return fmt_ci(entry["auc"], entry.get("auc_ci_low"), entry.get("auc_ci_high"))


def _seed_cell(metrics: Mapping, cohort: str, model: str) -> str:
    entry = _entry(metrics, cohort, model) or {}
    if not entry.get("n_seeds") or entry["n_seeds"] < 2 or entry.get("auc_seed_mean") is None:
        return ""
    return (f"; {int(entry['n_seeds'])} seeds: mean {entry['auc_seed_mean']:.2f} "
            f"(SD {entry['auc_seed_sd']:.2f}), worst {entry['auc_seed_min']:.2f}")


def _main_rows(metrics: Mapping) -> list[str]:
    """The main model's row (paper: internal and external AUC) and the integrated model's."""
    paper = PAPER_AUC["full"]
    cells = " | ".join(_auc_cell(metrics, c, MAIN_MODEL) + _seed_cell(metrics, c, MAIN_MODEL)
                       for c in VALIDATION_COHORTS)
    return [f"| {MODEL_LABELS[MAIN_MODEL]} | internal {fmt_ci(*paper['internal_validation'])}; "
            f"external {fmt_ci(*paper['external_validation'])} | {cells} |",
            f"| {MODEL_LABELS[INTEGRATED]} | {fmt_ci(*PAPER_AUC[INTEGRATED])}* | "
            f"{_auc_cell(metrics, 'internal_validation', INTEGRATED)} | "
            f"{_auc_cell(metrics, 'external_validation', INTEGRATED)} |"]


def _handcrafted_rows(metrics: Mapping) -> list[str]:
    return [f"| {MODEL_LABELS[model]} | — | "
            + " | ".join(_auc_cell(metrics, c, model) for c in VALIDATION_COHORTS) + " |"
            for model in HANDCRAFTED
            if any(model in metrics.get("cohorts", {}).get(c, {}) for c in VALIDATION_COHORTS)]


def _oracle_rows(metrics: Mapping) -> list[str]:
    rows = []
    for key, name in (("image_oracle_auc", IMAGE_ORACLE), ("oracle_auc", ORACLE)):
        values = [(_entry(metrics, c, MAIN_MODEL) or {}).get(key) for c in VALIDATION_COHORTS]
        if any(v is not None for v in values):
            cells = " | ".join("n/a" if v is None else f"{v:.2f}" for v in values)
            rows.append(f"| {MODEL_LABELS[name]}: expected ceiling | — | {cells} |")
    return rows


def readme_results_table(metrics: Mapping) -> str:
    """Markdown results table for README.md: the paper's reported AUCs beside this package's
    AUCs (DeLong 95% CI; seed-averaged, with the per-seed mean, SD and worst seed) for the main
    and integrated models, the handcrafted baselines and the oracles, labelled with the data
    and profile in ``metrics['meta']``."""
    meta = metrics.get("meta", {})
    label = f"{meta.get('data', PHANTOM_DATA)}, {meta.get('profile', 'demo')} profile"
    lines = [f"| Model | Paper (Jin et al. 2021): AUC (95% CI) | {label}: internal validation "
             f"| {label}: external validation |", "|---|---|---|---|",
             *_main_rows(metrics), *_handcrafted_rows(metrics), *_oracle_rows(metrics)]
    lines += ["", "AUC with 95% CI (DeLong). *The paper's abstract reports one AUC for the "
              "integrated model. " + ("Our numbers are measured on synthetic phantom data and "
                                      "are not comparable with the paper's clinical results."
                                      if "phantom" in label else
                                      "Our numbers are measured on the cohort named above.")]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- README
def replace_readme_section(text: str, table: str) -> str:
    """``text`` with the part between the results markers replaced by ``table``."""
    start, end = README_MARKERS
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), flags=re.S)
    if not pattern.search(text):
        raise ValueError(f"README has no {start} ... {end} markers")
    return pattern.sub(lambda _: f"{start}\n{table}{end}", text, count=1)


def readme_section(text: str) -> str | None:
    """The text between the README results markers, or None when they are absent."""
    start, end = README_MARKERS
    match = re.search(re.escape(start) + r"\n?(.*?)" + re.escape(end), text, flags=re.S)
    return match.group(1) if match else None


def update_readme(readme: str | Path, metrics: Mapping) -> bool:
    """Rewrite README's results section from ``metrics`` (atomic); False when the README has
    no results markers (nothing is written)."""
    text = Path(readme).read_text(encoding="utf-8")
    if readme_section(text) is None:
        return False
    new = replace_readme_section(text, readme_results_table(metrics))
    if new != text:
        write_atomic(readme, lambda tmp: tmp.write_text(new, encoding="utf-8"))
    return True


def readme_skip_reason(metrics: Mapping) -> str:
    """Why ``metrics`` must not go into README.md ('' when it is the demo phantom run)."""
    meta = metrics.get("meta", {})
    profile, data = meta.get("profile"), meta.get("data")
    if profile == config.DEFAULT_PROFILE and data == PHANTOM_DATA:
        return ""
    return (f"README.md shows the {config.DEFAULT_PROFILE} profile's {PHANTOM_DATA} run; "
            f"these metrics are {profile!r}, {data!r}")


def figure_table(figures_dir: str | Path | None = None) -> str:
    """Markdown table: figure file -> notebook, content and paper analogue (:data:`FIGURES`),
    plus any other ``fig*.png`` found in ``figures_dir``."""
    rows = dict(FIGURES)
    if figures_dir is not None and Path(figures_dir).exists():
        for png in sorted(Path(figures_dir).glob("fig*.png")):
            number = re.match(r"fig(\d\d)", png.stem)
            rows.setdefault(png.stem, (f"{number.group(1)}_*" if number else "?", "", "—"))
    lines = ["| Figure (PNG + PDF) | Notebook | Shows | Paper analogue |", "|---|---|---|---|"]
    lines += [f"| `figures/{stem}.png` | `{nb}` | {what} | {paper} |"
              for stem, (nb, what, paper) in rows.items()]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- command line
def _relative(path: Path) -> str:
    return str(path.relative_to(config.ROOT)) if path.is_relative_to(config.ROOT) else path.name


def report(profile: str | None = None, readme: Path = README, check: bool = False) -> int:
    """Rewrite (or, with ``check``, compare) README's results table from the profile's
    ``metrics.json``; print what happened. Exit status: 0, or 1 when the demo profile has no
    metrics.json or ``check`` finds the README out of date."""
    profile = config.get_profile(profile).name
    path = config.metrics_json(config.get_paths(profile).results_dir)
    if not path.exists():
        print(f"{_relative(path)} not found: run notebooks/04_evaluation.ipynb "
              f"(RPNET_PROFILE={profile}) first; README.md not changed")
        return int(profile == config.DEFAULT_PROFILE)
    metrics = json.loads(path.read_text(encoding="utf-8"))
    skip = readme_skip_reason(metrics)
    if skip:
        print(f"{skip}: README.md not changed. The table for {_relative(path)}:\n")
        print(readme_results_table(metrics))
        return 0
    return _write_or_check(Path(readme), metrics, path, check)


def _write_or_check(readme: Path, metrics: Mapping, source: Path, check: bool) -> int:
    text = readme.read_text(encoding="utf-8")
    current = readme_section(text) == readme_results_table(metrics)
    if check or current:
        state = "up to date with" if current else "differs from"
        print(f"{readme.name} results table {state} {_relative(source)}")
        return int(not current)
    if not update_readme(readme, metrics):
        print(f"{readme.name} has no {README_MARKERS[0]} ... {README_MARKERS[1]} markers")
        return 1
    print(f"{readme.name} results table rewritten from {_relative(source)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    summary = __doc__.split("\n\n")[0].replace("``", "")
    parser = argparse.ArgumentParser(prog="python -m utils.evaluation.report", description=summary)
    parser.add_argument("--profile", choices=sorted(config.PROFILES), default=None,
                        help=f"run profile (default: ${config.PROFILE_ENV} or "
                             f"{config.DEFAULT_PROFILE})")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when README.md's table is out of date")
    args = parser.parse_args(argv)
    return report(args.profile, check=args.check)


if __name__ == "__main__":
    sys.exit(main())
