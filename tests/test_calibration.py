"""Shared binary metrics: thresholds, metrics against hand-checkable cases, grouped bootstrap."""

import numpy as np
import pytest

from hfpc_reward.stats import (
    CalibrationError,
    binary_metrics,
    expected_calibration_error,
    grouped_bootstrap_ci,
    paired_difference_test,
    pick_threshold,
    precision_recall_f1,
    recall_at_precision,
)

# sorted by score: labels 0 0 1 0 1 1 1 1  (scores 0.1 .. 0.8)
SCORES = np.array([0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
LABELS = np.array([1, 1, 1, 1, 0, 1, 0, 0])


def test_pick_threshold_target_precision_takes_highest_recall():
    # precision 1.0 holds down to 0.5 (recall 4/5); at 0.3 precision is 5/6 = 0.833.
    assert pick_threshold(SCORES, LABELS, target_precision=1.0) == pytest.approx(0.5)
    assert pick_threshold(SCORES, LABELS, target_precision=0.8) == pytest.approx(0.3)


def test_pick_threshold_best_f1():
    # F1 at 0.5: 2*1*0.8/1.8 = 0.889; at 0.3: 2*(5/6)*1/(11/6) = 0.909 -> 0.3 wins.
    assert pick_threshold(SCORES, LABELS) == pytest.approx(0.3)


def test_pick_threshold_unreachable_precision_says_so():
    with pytest.raises(CalibrationError, match="no threshold reaches precision"):
        pick_threshold([0.9, 0.1], [0, 1], target_precision=0.9)
    with pytest.raises(CalibrationError, match="no positive"):
        pick_threshold([0.9, 0.1], [0, 0])


def test_binary_metrics_values():
    metrics = binary_metrics(SCORES, LABELS, threshold=0.5)
    assert metrics["precision"] == pytest.approx(1.0)
    assert metrics["recall"] == pytest.approx(0.8)
    assert metrics["f1"] == pytest.approx(2 * 0.8 / 1.8)
    # ROC-AUC: of the 5*3 (pos, neg) pairs only (0.3, 0.4) is misordered.
    assert metrics["roc_auc"] == pytest.approx(14 / 15)
    assert metrics["recall_at_precision_0.964"] == pytest.approx(0.8)
    assert metrics["n"] == 8 and metrics["n_positive"] == 5
    assert "ece" not in metrics


def test_recall_at_precision_zero_when_unreachable():
    assert recall_at_precision([0.9, 0.1], [0, 1], 0.964) == 0.0


def test_ece_perfect_and_off_by_constant():
    labels = np.array([0] * 50 + [1] * 50)
    assert expected_calibration_error(labels.astype(float), labels) == 0.0
    # every prediction 0.5 while half are positive: calibrated on average -> 0.
    assert expected_calibration_error(np.full(100, 0.5), labels) == pytest.approx(0.0)
    # every prediction 0.9, half positive: gap 0.4.
    assert expected_calibration_error(np.full(100, 0.9), labels) == pytest.approx(0.4)
    with pytest.raises(CalibrationError, match="probabilities in"):
        expected_calibration_error([1.5, 0.2], [1, 0])


def test_mismatched_inputs_raise():
    with pytest.raises(CalibrationError, match="differ in length"):
        binary_metrics([0.1, 0.2], [1], 0.5)
    with pytest.raises(CalibrationError, match="0 or 1"):
        binary_metrics([0.1, 0.2], [1, 2], 0.5)


def test_grouped_bootstrap_resamples_whole_groups():
    # Two groups with constant values: any group resample gives a mean of 0, 1/2 or 1 — never anything
    # else, which a row-level bootstrap of 10 rows would produce.
    values = np.array([0.0] * 5 + [1.0] * 5)
    groups = ["a"] * 5 + ["b"] * 5
    seen = []

    def mean(indices):
        seen.append(values[indices].mean())
        return float(values[indices].mean())

    ci = grouped_bootstrap_ci(mean, groups, n_resamples=200, seed=1)
    assert set(np.round(seen, 6)) <= {0.0, 0.5, 1.0}
    assert ci["estimate"] == pytest.approx(0.5)
    assert ci["low"] == 0.0 and ci["high"] == 1.0 and ci["n_valid"] == 200


def test_grouped_bootstrap_dict_metrics_and_reproducible():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=300)
    labels = (scores + rng.normal(size=300) > 0).astype(int)
    groups = np.repeat(np.arange(60), 5)

    def metrics(indices):
        return binary_metrics(scores[indices], labels[indices], 0.0)

    first = grouped_bootstrap_ci(metrics, groups, n_resamples=100, seed=3)
    second = grouped_bootstrap_ci(metrics, groups, n_resamples=100, seed=3)
    assert first == second
    roc = first["roc_auc"]
    assert roc["low"] < roc["estimate"] < roc["high"]
    assert 0.6 < roc["estimate"] < 0.95


def test_precision_recall_f1_is_the_one_definition_for_every_judge():
    from hfpc_reward.consistency.calibrate import detection_metrics

    truth = [True, True, False, False, True]
    flagged = [True, False, True, False, True]
    assert precision_recall_f1(truth, flagged) == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3}
    )
    assert precision_recall_f1([False, False], [False, False]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    # the consistency judge's detection metrics: inconsistent (truth_consistent False) is the positive class
    metrics = detection_metrics([not t for t in truth], [not f for f in flagged])
    assert metrics["precision"] == pytest.approx(2 / 3) and metrics["false_rejection"] == pytest.approx(0.5)


def test_paired_difference_test_pairs_by_group():
    diffs = np.array([0.5, 0.25, 0.5, 0.75, 0.25, 0.5, 0.5, 0.25])
    result = paired_difference_test(diffs, [f"p{i}" for i in range(8)], n_resamples=500, seed=0)
    assert result["estimate"] == pytest.approx(diffs.mean()) and result["low"] > 0
    assert result["p_value"] < 0.02 and result["better"] == 8 and result["worse"] == 0
    null = paired_difference_test([0.5, -0.5] * 4, [f"p{i}" for i in range(8)], n_resamples=500, seed=0)
    assert null["p_value"] == pytest.approx(1.0)
    with pytest.raises(CalibrationError, match="paired test must be one of"):
        paired_difference_test(diffs, list(range(8)), method="t-test")


def test_failure_kinds_come_from_structured_fields_not_reason_text():
    from hfpc_reward.data.results import failure_kinds

    moved = {"passed": False, "consistent": False, "failed_checks": ["moved"], "reasons": ["expanded 23%"]}
    assert failure_kinds(moved) == ["moved"]
    assert failure_kinds({"passed": False, "consistent": True, "failed_checks": []}) == ["background"]
    assert failure_kinds({"passed": None, "consistent": None, "error": "unreadable"}) == ["error"]
    assert failure_kinds({"passed": True, "consistent": True, "failed_checks": []}) == []
    assert failure_kinds({"consistent": True, "failed_checks": []}) == []  # a check record has no `passed`
