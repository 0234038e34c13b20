"""Paired comparisons of models on the same patients: the full model against each ablation
and baseline, the integrated model against the imaging model, by paired DeLong tests with
Holm-adjusted one-sided p-values per cohort."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from utils.evaluation import stats as st
from utils.evaluation.checks import undefined_reason
from utils.evaluation.labels import (
    ABLATIONS,
    HANDCRAFTED,
    INTEGRATED,
    MAIN_MODEL,
    VOLUME_GT,
    VOLUME_PRED,
    cohorts_in,
)


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of model ``a`` against ``b`` on the same patients."""

    a: str
    b: str
    family: str
    question: str


def default_comparisons(models: Iterable[str]) -> list[Comparison]:
    """Full model vs each ablation and each volume baseline; integrated vs imaging model."""
    present = set(models)
    found = [Comparison(MAIN_MODEL, m, "ablation", f"full > {m}?") for m in ABLATIONS]
    found += [Comparison(MAIN_MODEL, m, "handcrafted baseline", f"full > {m}?")
              for m in HANDCRAFTED]
    found += [Comparison(MAIN_MODEL, m, "volume baseline", f"full > {m}?")
              for m in (VOLUME_GT, VOLUME_PRED)]
    found.append(Comparison(INTEGRATED, MAIN_MODEL, "integrated", "integrated > full?"))
    return [c for c in found if {c.a, c.b} <= present]


def paired_delong_tests(scores: pd.DataFrame, comparisons: Sequence[Comparison] | None = None,
                        level: float = 0.95) -> pd.DataFrame:
    """Paired DeLong tests (:func:`utils.evaluation.stats.delong_paired_test`) of each
    comparison in each cohort, on the patients scored by both models: two-sided p and
    one-sided p for H1: AUC_a > AUC_b, the AUC difference with its ``level`` CI, and
    Holm-adjusted one-sided p-values within each cohort (unadjusted p-values are also
    reported)."""
    comparisons = default_comparisons(scores["model"]) if comparisons is None else comparisons
    wide = scores.pivot_table(index=["patient_id", "cohort", "pcr"], columns="model",
                              values="score", dropna=False).reset_index()
    rows = []
    for cohort in cohorts_in(scores):
        for comparison in comparisons:
            if {comparison.a, comparison.b} <= set(wide.columns):
                group = wide[wide["cohort"] == cohort].dropna(subset=[comparison.a,
                                                                       comparison.b])
                rows.append({"cohort": cohort, **_paired_row(group, comparison, level)})
    table = pd.DataFrame(rows)
    if not table.empty:
        table["p_greater_holm"] = table.groupby("cohort")["p_greater"].transform(
            lambda p: pd.Series(st.holm(p.to_numpy()), index=p.index))
    return table


def _paired_row(group: pd.DataFrame, comparison: Comparison, level: float) -> dict:
    y = group["pcr"].to_numpy(int)
    row = {"model_a": comparison.a, "model_b": comparison.b, "family": comparison.family,
           "question": comparison.question, "n": int(y.size), "n_pcr": int(y.sum()),
           "note": undefined_reason(y)}
    keys = ("auc_a", "auc_b", "diff", "diff_ci_low", "diff_ci_high", "z", "p_two_sided",
            "p_greater")
    if row["note"]:
        return {**row, **dict.fromkeys(keys, np.nan)}
    row["note"] = st.variance_undefined(y)
    a, b = group[comparison.a].to_numpy(float), group[comparison.b].to_numpy(float)
    two = st.delong_paired_test(y, a, b, "two-sided", level)
    one = st.delong_paired_test(y, a, b, "greater", level)
    values = (two["auc1"], two["auc2"], two["diff"], two["ci_low"], two["ci_high"], two["z"],
              two["p"], one["p"])
    return {**row, **dict(zip(keys, values, strict=True))}


def seed_pair_agreement(tests: pd.DataFrame, seed_aucs: pd.DataFrame | None) -> pd.DataFrame:
    """``tests`` plus ``seed_pairs`` and ``seed_pairs_agree``: in how many same-seed pairs
    (seed k of ``model_a`` against seed k of ``model_b``, or against ``model_b``'s single
    score when it has no seeds, as a baseline) the AUC difference has the ensemble's sign."""
    out = tests.copy()
    out["seed_pairs"], out["seed_pairs_agree"] = 0, 0
    if seed_aucs is None or out.empty:
        return out
    per_seed = {key: group.set_index("seed")["auc"]
                for key, group in seed_aucs.groupby(["model", "cohort"], sort=False)}
    for index, row in out.iterrows():
        pairs = _seed_differences(per_seed, row)
        if pairs.size and np.isfinite(row["diff"]) and row["diff"] != 0:
            out.loc[index, "seed_pairs"] = int(pairs.size)
            out.loc[index, "seed_pairs_agree"] = int((np.sign(pairs) == np.sign(row["diff"])).sum())
    return out


def _seed_differences(per_seed: dict[tuple[str, str], pd.Series], row: pd.Series) -> np.ndarray:
    """Per-seed AUC differences a - b of one comparison in one cohort (finite ones only)."""
    a = per_seed.get((row["model_a"], row["cohort"]))
    b = per_seed.get((row["model_b"], row["cohort"]))
    if a is None:
        return np.array([])
    if b is None:
        diffs = a.to_numpy(float) - row["auc_b"]
    else:
        common = a.index.intersection(b.index)
        diffs = a.loc[common].to_numpy(float) - b.loc[common].to_numpy(float)
    return diffs[np.isfinite(diffs)]
