"""Tests of the statistics (utils.evaluation.stats, rates, curves, integrated) against published
pROC values (aSAH data) and hand-computed answers."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

import utils.config
from utils import measures
from utils.evaluation import checks, curves, rates
from utils.evaluation import integrated as ig
from utils.evaluation import stats as st

REFERENCE_DIR = Path(utils.config.ROOT).parent / "shared" / "reference"
TOL = 1e-9

AUC = {"wfns": 0.823678861788618, "ndka": 0.611957994579946, "s100b": 0.731368563685637}
VARIANCE = {"wfns": 0.00146991470882363, "ndka": 0.0031908105493913,
            "s100b": 0.00266868245717244}
COVARIANCE = {("wfns", "ndka"): -0.000532967856762438,
              ("ndka", "s100b"): -0.000756164938056579,
              ("s100b", "wfns"): 0.00119615567376754}
PAIRED = {  # first, second: z, p, ci of difference
    ("wfns", "s100b"): (2.20898359144091, 0.0271757822291882,
                        0.0104061769564846, 0.174214419249478),
    ("wfns", "ndka"): (2.79777591868904, 0.00514557970691098,
                       0.0634011709339876, 0.3600405634833566),
    ("ndka", "s100b"): (-1.39077002573558, 0.164295175223054,
                        -0.2876917446341914, 0.0488706064228094),
}
UNPAIRED = {("wfns", "s100b"): (1.43490640926908, 0.152825378808796),
            ("wfns", "ndka"): (3.10125096778969, 0.00220950791756457),
            ("ndka", "s100b"): (-1.55995743389685, 0.120192832430845)}


@pytest.fixture(scope="module")
def asah() -> pd.DataFrame:
    path = REFERENCE_DIR / "asah.csv"
    if not path.exists():
        pytest.skip(f"pROC reference data not found at {path} (kept outside the repo: GPL)")
    frame = pd.read_csv(path)
    frame["poor"] = (frame["outcome"] == "Poor").astype(int)
    return frame


# ----------------------------------------------------------------------------- pROC values

@pytest.mark.parametrize("marker", list(AUC))
def test_auc_matches_proc(asah, marker):
    assert st.roc_auc(asah["poor"], asah[marker]) == pytest.approx(AUC[marker], abs=TOL)


def test_delong_aucs_and_covariance_match_proc(asah):
    markers = list(AUC)
    aucs, cov = st.delong_auc_cov(asah["poor"], asah[markers].to_numpy().T)
    for i, marker in enumerate(markers):
        assert aucs[i] == pytest.approx(AUC[marker], abs=TOL)
        assert cov[i, i] == pytest.approx(VARIANCE[marker], abs=TOL)
    for (first, second), expected in COVARIANCE.items():
        i, j = markers.index(first), markers.index(second)
        assert cov[i, j] == pytest.approx(expected, abs=TOL)
        assert cov[j, i] == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize(("subset", "expected"), [
    ("all", (0.611957994579946, 0.501244999271703, 0.722670989888189)),
    ("Female", (0.6671428571, 0.5261398281, 0.8081458862)),
])
def test_delong_ci_matches_proc(asah, subset, expected):
    rows = asah if subset == "all" else asah[asah["gender"] == subset]
    auc, low, high = st.delong_ci(rows["poor"], rows["ndka"])
    # the Female values are printed to 10 decimals, so they are only good to 5e-11
    assert (auc, low, high) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("pair", list(PAIRED))
def test_paired_delong_matches_proc(asah, pair):
    first, second = pair
    z, p, low, high = PAIRED[pair]
    result = st.delong_paired_test(asah["poor"], asah[first], asah[second])
    assert result["z"] == pytest.approx(z, abs=TOL)
    assert result["p"] == pytest.approx(p, abs=TOL)
    assert result["ci_low"] == pytest.approx(low, abs=TOL)
    assert result["ci_high"] == pytest.approx(high, abs=TOL)
    assert result["diff"] == pytest.approx(AUC[first] - AUC[second], abs=TOL)


def test_paired_delong_of_identical_scores_is_null(asah):
    with np.errstate(all="raise"):
        result = st.delong_paired_test(asah["poor"], asah["wfns"], asah["wfns"])
    assert result["z"] == 0
    assert result["p"] == 1
    assert result["ci_low"] == result["ci_high"] == 0


@pytest.mark.parametrize(("alternative", "expected"),
                         [("greater", 0.0135878911145941), ("less", 0.986412108885406)])
def test_paired_delong_one_sided_matches_proc(asah, alternative, expected):
    result = st.delong_paired_test(asah["poor"], asah["wfns"], asah["s100b"], alternative)
    assert result["p"] == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("pair", list(UNPAIRED))
def test_unpaired_delong_matches_proc(asah, pair):
    first, second = pair
    d, p = UNPAIRED[pair]
    y = asah["poor"]
    forward = st.delong_unpaired_test(y, asah[first], y, asah[second])
    backward = st.delong_unpaired_test(y, asah[second], y, asah[first])
    assert forward["d"] == pytest.approx(d, abs=TOL)
    assert forward["p"] == pytest.approx(p, abs=TOL)
    assert backward["d"] == pytest.approx(-d, abs=TOL)
    assert backward["p"] == pytest.approx(p, abs=TOL)
    one_sided = st.delong_unpaired_test(y, asah[first], y, asah[second],
                                        alternative="greater" if d > 0 else "less")
    assert one_sided["p"] == pytest.approx(p / 2, abs=TOL)


# ----------------------------------------------------------------------------- synthetic checks

def _synthetic(n_pos: int = 150, n_neg: int = 150, shift: float = 1.0, seed: int = 1):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    score = np.r_[rng.normal(shift, 1, n_pos), rng.normal(0, 1, n_neg)]
    return y, np.round(score, 1)  # rounding creates ties


def test_auc_equals_pairwise_count_with_ties():
    y, score = _synthetic(40, 30)
    pos, neg = score[y == 1], score[y == 0]
    diff = pos[:, None] - neg[None, :]
    brute = ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size
    assert (diff == 0).any()
    assert st.roc_auc(y, score) == pytest.approx(brute, abs=1e-12)
    assert st.delong_auc_cov(y, score)[0][0] == pytest.approx(brute, abs=1e-12)


def test_delong_paired_matches_brute_force_placements():
    """Placements from the O(mn) definition (DeLong 1988) instead of midranks."""
    y, s1 = _synthetic(25, 35, seed=2)
    s2 = np.round(s1 + np.random.default_rng(3).normal(0, 1, y.size), 1)
    aucs, cov = st.delong_auc_cov(y, np.vstack([s1, s2]))

    def placements(score):
        diff = score[y == 1][:, None] - score[y == 0][None, :]
        psi = (diff > 0) + 0.5 * (diff == 0)
        return psi.mean(axis=1), psi.mean(axis=0)

    (v10_1, v01_1), (v10_2, v01_2) = placements(s1), placements(s2)
    expected = np.cov([v10_1, v10_2]) / 25 + np.cov([v01_1, v01_2]) / 35
    np.testing.assert_allclose(cov, expected, atol=1e-14)
    np.testing.assert_allclose(aucs, [v10_1.mean(), v10_2.mean()], atol=1e-14)


def test_bootstrap_ci_agrees_with_delong():
    y, score = _synthetic()
    auc, low, high = st.delong_ci(y, score)
    boot_auc, boot_low, boot_high = st.bootstrap_auc_ci(y, score, n_resamples=2000, seed=0)
    assert boot_auc == auc
    assert boot_low == pytest.approx(low, abs=0.03)
    assert boot_high == pytest.approx(high, abs=0.03)
    assert st.bootstrap_auc_ci(y, score, n_resamples=2000, seed=0)[1] == boot_low


def _threshold_toy() -> tuple[np.ndarray, np.ndarray]:
    """20 positives, 10 negatives. ROC corners: (FPR 0, TPR 0.70) with J = 0.70 at score 87,
    and (FPR 0.2, TPR 0.85) with distance^2 = 0.0625 to (0, 1) at score 82."""
    labels = [1] * 14 + [0] * 2 + [1] * 3 + [0] * 8 + [1] * 3
    scores = np.arange(100, 100 - len(labels), -1, dtype=float)
    return np.array(labels), scores


def test_choose_threshold_known_answers():
    y, score = _threshold_toy()
    assert rates.choose_threshold(y, score, "closest_topleft") == 82
    assert rates.choose_threshold(y, score, "youden") == 87
    result = rates.binary_performance(y, score, 82)
    assert (result["sensitivity"], result["specificity"]) == (0.85, 0.8)


def test_binary_performance_counts_and_wilson_ci():
    y = np.r_[np.ones(10, int), np.zeros(5, int)]
    score = np.r_[np.full(8, 0.9), np.full(2, 0.1), np.full(4, 0.2), 0.95]
    result = rates.binary_performance(y, score, threshold=0.5)
    assert {k: result[k] for k in ("tp", "fn", "fp", "tn")} == {"tp": 8, "fn": 2, "fp": 1,
                                                                 "tn": 4}
    assert result["sensitivity"] == 0.8
    assert result["sensitivity_low"] == pytest.approx(0.4902, abs=1e-4)  # textbook value
    assert result["sensitivity_high"] == pytest.approx(0.9433, abs=1e-4)
    z = stats.norm.ppf(0.975)  # Wilson score formula for ppv = 8/9
    n, phat = 9, 8 / 9
    centre, half = phat + z**2 / (2 * n), z * np.sqrt(phat * (1 - phat) / n + z**2 / (4 * n**2))
    assert result["ppv_low"] == pytest.approx((centre - half) / (1 + z**2 / n), abs=1e-12)
    assert result["ppv_high"] == pytest.approx((centre + half) / (1 + z**2 / n), abs=1e-12)
    assert result["accuracy"] == pytest.approx(12 / 15)


def test_binary_performance_zero_over_zero_is_nan():
    y, score = np.array([1, 0, 1, 0]), np.array([0.1, 0.2, 0.3, 0.4])
    result = rates.binary_performance(y, score, threshold=0.9)
    assert np.isnan(result["ppv"]) and np.isnan(result["ppv_low"])
    assert result["sensitivity"] == 0 and result["specificity"] == 1 and result["npv"] == 0.5


def test_net_benefit_hand_computed():
    y, prob = np.array([1, 1, 0, 0, 0]), np.array([0.9, 0.4, 0.6, 0.2, 0.1])
    table = curves.net_benefit(y, prob, [0.3, 0.5])
    assert list(table.columns) == ["threshold", "model", "treat_all", "treat_none"]
    # pt = 0.3: TP 2, FP 1; pt = 0.5: TP 1, FP 1; treat all: TP 2, FP 3
    np.testing.assert_allclose(table["model"], [2 / 5 - 1 / 5 * 3 / 7, 1 / 5 - 1 / 5])
    np.testing.assert_allclose(table["treat_all"], [2 / 5 - 3 / 5 * 3 / 7, 2 / 5 - 3 / 5])
    np.testing.assert_array_equal(table["treat_none"], 0)
    with pytest.raises(ValueError, match="thresholds"):
        curves.net_benefit(y, prob, [1.0])


def test_pr_curve_and_roc_points():
    y, score = np.array([1, 0, 1]), np.array([0.9, 0.8, 0.7])
    result = curves.pr_curve(y, score)
    assert result["average_precision"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    points = curves.roc_curve_points(y, score)
    np.testing.assert_allclose(points["tpr"], [0, 0.5, 0.5, 1])
    np.testing.assert_allclose(points["fpr"], [0, 0, 1, 1])


def test_calibration_hand_computed():
    y, prob = np.array([0, 1, 1, 0, 1]), np.array([0.1, 0.15, 0.8, 0.9, 0.95])
    result = curves.calibration(y, prob, n_bins=2)
    np.testing.assert_allclose(result["prob_pred"], [0.125, (0.8 + 0.9 + 0.95) / 3])
    np.testing.assert_allclose(result["prob_true"], [0.5, 2 / 3])
    brier = np.mean((prob - y) ** 2)
    assert result["brier"] == pytest.approx(brier, abs=1e-15)


# ----------------------------------------------------------------------------- integrated model

def _marker_frame(seed: int = 4, n: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    score = rng.uniform(0, 1, n)
    cea = rng.lognormal(1.0, 1.0, n)
    logit = -1 + 3 * score - 0.5 * np.log1p(cea)
    frame = pd.DataFrame({"score": score, "cea": cea,
                          "pcr": (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int)})
    frame.loc[[3, 10, 50], "cea"] = np.nan
    return frame


def test_integrated_model_matches_direct_penalised_likelihood():
    frame, features = _marker_frame(), ["score", "cea"]
    pipeline = ig.fit_integrated_model(frame, features, log_columns=["cea"], C=2.0)
    x = frame[features].to_numpy()
    medians = np.nanmedian(x, axis=0)
    np.testing.assert_allclose(pipeline.named_steps["impute"].statistics_, medians)
    x = np.where(np.isnan(x), medians, x)
    x[:, 1] = np.log1p(x[:, 1])
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    y = frame["pcr"].to_numpy()

    def objective(params):  # sklearn's L2 objective: C * sum(log loss) + ||w||^2 / 2
        eta = params[0] + x @ params[1:]
        return 2.0 * np.sum(np.logaddexp(0, eta) - y * eta) + 0.5 * params[1:] @ params[1:]

    reference = optimize.minimize(objective, np.zeros(3), method="BFGS", tol=1e-10).x
    table = ig.coefficient_table(pipeline, features)
    np.testing.assert_allclose(table["coefficient"], reference[1:], atol=1e-5)
    assert pipeline.named_steps["logistic"].intercept_[0] == pytest.approx(reference[0],
                                                                           abs=1e-5)
    np.testing.assert_allclose(table["odds_ratio_per_sd"], np.exp(table["coefficient"]))
    assert list(table["transform"]) == ["none", "log1p"]
    assert table["coefficient"].iloc[0] > 0  # the score raises the odds of pCR
    probability = pipeline.predict_proba(frame[features])[:, 1]
    np.testing.assert_allclose(probability, 1 / (1 + np.exp(-(reference[0] + x @ reference[1:]))),
                               atol=1e-5)


def test_integrated_model_refuses_negative_markers():
    frame = _marker_frame()
    frame.loc[0, "cea"] = -2.0
    with pytest.raises(ValueError, match="1 negative values"):
        ig.fit_integrated_model(frame, ["score", "cea"], log_columns=["cea"])


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize(("y", "score", "message"), [
    ([1, 1, 1], [0.1, 0.2, 0.3], r"one class only \(3 values, all equal to 1\)"),
    ([0, 1, 0], [0.1, 0.2], "y_true has 3 values but score has 2"),
    ([0, 1, 0, 1], [0.1, np.nan, 0.3, np.nan], "score contains 2 NaN values of 4"),
    ([0, 2, 1], [0.1, 0.2, 0.3], r"binary 0/1, found values \[0, 1, 2\]"),
])
def test_invalid_inputs_raise_clear_errors(y, score, message):
    for function in (st.roc_auc, st.delong_ci, st.bootstrap_auc_ci, rates.choose_threshold):
        with pytest.raises(ValueError, match=message):
            function(y, score)


def test_invalid_options_raise():
    y, score = np.array([0, 1, 0, 1]), np.array([0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="alternative"):
        st.delong_paired_test(y, score, score, alternative="bigger")
    with pytest.raises(ValueError, match="method"):
        rates.choose_threshold(y, score, method="best")
    with pytest.raises(ValueError, match=r"prob must lie in \[0, 1\]"):
        curves.calibration(y, score * 10)
    for a, b in itertools.permutations([score, score[:3]]):
        with pytest.raises(ValueError, match="lengths differ"):
            st.delong_paired_test(y, a, b)


# ----------------------------------------------------------------------------- tiny classes
@pytest.mark.parametrize("y", [[1, 0, 0, 0, 0], [0, 1, 1, 1, 1]])
def test_one_patient_in_a_class_gives_nan_not_a_unit_interval(y):
    y = np.array(y)
    a = np.array([0.9, 0.2, 0.4, 0.3, 0.1])
    b = np.array([0.5, 0.6, 0.1, 0.2, 0.3])
    assert "fewer than two patients" in st.variance_undefined(y)
    auc, low, high = st.delong_ci(y, a)
    assert 0 <= auc <= 1 and np.isnan(low) and np.isnan(high)
    test = st.delong_paired_test(y, a, b)
    assert np.isnan(test["p"]) and np.isnan(test["z"]) and np.isnan(test["ci_low"])
    assert np.isfinite(test["diff"])
    assert np.isnan(st.delong_unpaired_test(y, a, np.array([1, 1, 0, 0]),
                                            np.array([0.9, 0.8, 0.1, 0.2]))["p"])
    two_each = np.array([1, 1, 0, 0, 0])
    assert st.variance_undefined(two_each) == ""
    assert np.isfinite(st.delong_ci(two_each, a)[1])


# ----------------------------------------------------------------------------- small helpers
def test_holm_matches_hand_computed_step_down():
    p = [0.01, np.nan, 0.04, 0.03, 0.2]
    # sorted 0.01, 0.03, 0.04, 0.2 times 4, 3, 2, 1, then the running maximum
    np.testing.assert_allclose(st.holm(p), [0.04, np.nan, 0.09, 0.09, 0.2])
    assert st.holm([0.5, 0.6]).tolist() == [1.0, 1.0]


def test_logit_and_sigmoid_are_inverse_and_clipped():
    p = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(measures.sigmoid(st.logit(p)), p)
    assert st.logit(0.5) == 0.0 and np.isfinite(st.logit([0.0, 1.0])).all()


def test_auc_or_nan_needs_both_classes():
    assert measures.auc_or_nan([0, 1, 1], [0.2, 0.4, 0.3]) == 1.0
    assert np.isnan(measures.auc_or_nan([1, 1], [0.2, 0.4]))
    assert np.isnan(measures.auc_or_nan([], []))
    assert checks.undefined_reason([1, 1]) == "one class only (0 non-pCR, 2 pCR)"
    assert checks.undefined_reason([]) == "no patients" and checks.undefined_reason([0, 1]) == ""
