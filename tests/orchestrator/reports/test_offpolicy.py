"""Off-policy estimators on hand-made logs and on simulated logs whose true value is known."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import stats  # type: ignore[import-untyped]

from orchestrator.reports.offpolicy import (
    OffPolicyEstimate,
    always,
    evaluate,
    ranking_ips,
    ranking_target_probability,
    split,
)

# Two kinds of user (40% are kind 1), three arms; the logging policy favours a
# different arm for each kind, so propensities vary by row.
RATES = np.array([[0.04, 0.05, 0.06], [0.10, 0.07, 0.05]])
LOGGING = np.array([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
KIND_1 = 0.4
PERSONAL = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])  # arm 2 for kind 0, arm 0 for kind 1


@dataclass(frozen=True)
class Log:
    kind: np.ndarray
    chosen: np.ndarray
    propensity: np.ndarray
    reward: np.ndarray


def simulate(rng: np.random.Generator, rows: int) -> Log:
    kind = (rng.random(rows) < KIND_1).astype(int)
    chosen = (rng.random(rows)[:, np.newaxis] > LOGGING[kind].cumsum(axis=1)).sum(axis=1)
    reward = (rng.random(rows) < RATES[kind, chosen]).astype(float)
    return Log(kind, chosen, LOGGING[kind, chosen], reward)


def true_value(target: str) -> float:
    weights = np.array([1 - KIND_1, KIND_1])
    if target == "personal":
        return float(weights @ (RATES * PERSONAL).sum(axis=1))
    return float(weights @ (RATES @ targets(np.zeros(1, dtype=int))[target]))


def targets(kind: np.ndarray) -> dict[str, np.ndarray]:
    """Fixed allocations are one row of shares; the personal policy has a row per user."""
    return {"always_b": always(1, 3), "split_1_1_2": split([1, 1, 2]), "personal": PERSONAL[kind]}


RUNS, ROWS, RESAMPLES = 200, 1000, 200
ESTIMATORS = ("ips", "snips", "doubly_robust", "doubly_robust_wrong_model")


@pytest.fixture(scope="module")
def simulated() -> dict[tuple[str, str], list[OffPolicyEstimate]]:
    """Every estimator and target on the same RUNS simulated logs (one seed each)."""
    out: dict[tuple[str, str], list[OffPolicyEstimate]] = {}
    for seed in range(RUNS):
        rng = np.random.default_rng(seed)
        log = simulate(rng, ROWS)
        for name, target in targets(log.kind).items():
            args = dict(chosen=log.chosen, propensity=log.propensity, reward=log.reward,
                        target=target, resamples=RESAMPLES)  # fmt: skip
            good = evaluate(**args, predictions=RATES[log.kind], rng=rng)  # type: ignore[arg-type]
            assert good.doubly_robust is not None
            for key, estimate in [("ips", good.ips), ("snips", good.snips),
                                  ("doubly_robust", good.doubly_robust)]:  # fmt: skip
                out.setdefault((key, name), []).append(estimate)
        # a reward model that is wrong everywhere: doubly robust must still be unbiased
        wrong = evaluate(chosen=log.chosen, propensity=log.propensity, reward=log.reward,
                         target=PERSONAL[log.kind], predictions=RATES[log.kind] * 1.5 + 0.02,
                         rng=rng, resamples=RESAMPLES).doubly_robust  # fmt: skip
        assert wrong is not None
        out.setdefault(("doubly_robust_wrong_model", "personal"), []).append(wrong)
    return out


@pytest.mark.parametrize(
    ("estimator", "target"),
    [(e, t) for e in ESTIMATORS[:3] for t in ("always_b", "split_1_1_2", "personal")]
    + [("doubly_robust_wrong_model", "personal")],
)
def test_unbiased_on_average_and_intervals_cover(
    simulated: dict[tuple[str, str], list[OffPolicyEstimate]], estimator: str, target: str
) -> None:
    estimates = simulated[(estimator, target)]
    truth = true_value(target)
    values = np.array([e.value for e in estimates], dtype=float)
    # the mean of RUNS independent estimates is within 4 standard errors of the truth
    assert abs(values.mean() - truth) < 4 * values.std() / math.sqrt(RUNS)
    covered = np.mean([e.low is not None and e.high is not None and e.low <= truth <= e.high
                       for e in estimates])  # fmt: skip
    assert 0.90 <= covered <= 0.99


def test_a_good_reward_model_makes_doubly_robust_steadier(
    simulated: dict[tuple[str, str], list[OffPolicyEstimate]],
) -> None:
    for target in ("always_b", "split_1_1_2", "personal"):
        spread = {
            name: np.array([e.value for e in simulated[(name, target)]], dtype=float).std()
            for name in ("ips", "doubly_robust")
        }
        assert spread["doubly_robust"] < spread["ips"]


def test_estimates_by_hand() -> None:
    chosen, propensity, reward = [0, 1, 0, 2], [0.5, 0.25, 0.5, 0.25], [1.0, 0.0, 0.0, 1.0]
    rng = np.random.default_rng(0)
    report = evaluate(chosen=chosen, propensity=propensity, reward=reward,
                      target=always(0, 3), rng=rng, resamples=50,
                      predictions=[[0.4, 0.1, 0.2]] * 4)  # fmt: skip
    # weights 2, 0, 2, 0: IPS (2 + 0) / 4, SNIPS 2 / 4
    assert report.ips.value == pytest.approx(0.5)
    assert report.snips.value == pytest.approx(0.5)
    # DR: 0.4 + mean(2(1 - 0.4), 0, 2(0 - 0.4), 0)
    assert report.doubly_robust is not None
    assert report.doubly_robust.value == pytest.approx(0.4 + (1.2 - 0.8) / 4)
    assert report.ips.effective_sample_size == pytest.approx(2.0)
    assert report.ips.rows == 4
    assert report.ips.resamples == 50
    shares = split([1, 1, 2])  # 1/4, 1/4, 1/2: weights 0.5, 1, 0.5, 2
    by_split = evaluate(chosen=chosen, propensity=propensity, reward=reward, target=shares,
                        predictions=np.zeros((4, 3)), rng=rng)  # fmt: skip
    assert by_split.ips.value == pytest.approx((0.5 * 1 + 2 * 1) / 4)
    assert by_split.snips.value == pytest.approx(2.5 / 4.0)
    got = by_split.doubly_robust
    assert got is not None
    assert got.value == pytest.approx((0.5 * 1 + 2 * 1) / 4)
    assert got.value is not None
    assert got.low is not None
    assert got.high is not None
    assert got.low <= got.value <= got.high


def test_the_same_seed_gives_the_same_interval() -> None:
    log = simulate(np.random.default_rng(3), 500)

    def run(seed: int) -> OffPolicyEstimate:
        return evaluate(chosen=log.chosen, propensity=log.propensity, reward=log.reward,
                        target=always(2, 3), rng=np.random.default_rng(seed),
                        resamples=200).ips  # fmt: skip

    assert run(1) == run(1)
    assert run(1).value == run(2).value


@pytest.mark.parametrize(
    ("chosen", "propensity", "reward", "target", "message"),
    [
        ([0, 1], [0.5, 0.0], [1, 0], [0.5, 0.5], "propensities"),
        ([0, 1], [0.5, 1.5], [1, 0], [0.5, 0.5], "propensities"),
        ([0, 2], [0.5, 0.5], [1, 0], [0.5, 0.5], "arm indices"),
        ([0, 1], [0.5, 0.5], [1, 0], [0.5, 0.6], "summing to 1"),
        ([0, 1], [0.5, 0.5], [1], [0.5, 0.5], "one length"),
        ([0, 1], [0.5, 0.5], [1, float("nan")], [0.5, 0.5], "finite"),
    ],
)
def test_bad_logs_are_refused(
    chosen: list[int], propensity: list[float], reward: list[float], target: list[float],
    message: str,
) -> None:  # fmt: skip
    with pytest.raises(ValueError, match=message):
        evaluate(chosen=chosen, propensity=propensity, reward=reward, target=target,
                 rng=np.random.default_rng(0))  # fmt: skip


def test_no_rows_and_no_weight_give_none() -> None:
    rng = np.random.default_rng(0)
    empty = evaluate(chosen=np.zeros(0, dtype=int), propensity=[], reward=[],
                     target=always(0, 2), rng=rng, predictions=np.zeros((0, 2)))  # fmt: skip
    assert (empty.ips.value, empty.snips.value) == (None, None)
    assert empty.doubly_robust is not None
    assert empty.doubly_robust.value is None
    # the target never chooses a logged arm: IPS says 0, SNIPS is undefined (0 / 0)
    unseen = evaluate(chosen=[0, 0], propensity=[0.9, 0.9], reward=[1, 0],
                      target=always(1, 2), rng=rng)  # fmt: skip
    assert unseen.ips.value == 0.0
    assert (unseen.snips.value, unseen.snips.low, unseen.snips.high) == (None, None, None)
    assert unseen.ips.effective_sample_size is None


# Rankings: 3 positions, 6 items; the position-based click model P(click) = θₖ·aⱼ.
EXAMINE = np.array([0.3, 0.2, 0.1])
ATTRACT = np.array([0.5, 0.4, 0.3, 0.3, 0.2, 0.1])
BASE = np.array([0, 1, 2])  # what the logging ranker shows when it does not explore
EXPLORE = 0.2  # then it shows 3 distinct items in a uniformly random order
TARGET = [3, 0, 4]


def simulate_rankings(rng: np.random.Generator, impressions: int) -> dict[str, np.ndarray]:
    explored = rng.random(impressions) < EXPLORE
    random_slates = np.argsort(rng.random((impressions, len(ATTRACT))), axis=1)[:, :3]
    slates = np.where(explored[:, np.newaxis], random_slates, BASE)
    positions = np.broadcast_to(np.arange(3), slates.shape)
    # item j at position k: (1 - ε)·[base puts j at k] + ε/6
    logging = (1 - EXPLORE) * (slates == BASE) + EXPLORE / len(ATTRACT)
    clicks = rng.random(slates.shape) < EXAMINE * ATTRACT[slates]
    return {
        "impression": np.repeat(np.arange(impressions), 3),
        "item": slates.ravel(),
        "position": positions.ravel(),
        "logging": logging.ravel(),
        "reward": clicks.ravel().astype(float),
    }


def test_ranking_target_probability() -> None:
    got = ranking_target_probability(
        impression=["u1", "u1", "u1", "u2", "u3"], item=["x", "y", "z", "x", "x"],
        position=[0, 1, 2, 0, 0], rankings={"u1": ["x", "z", "z"], "u2": ["x"]},
    )  # fmt: skip
    assert got.tolist() == [1.0, 0.0, 1.0, 1.0, 0.0]


def test_ranking_estimates_are_unbiased_and_cover() -> None:
    truth = float((EXAMINE * ATTRACT[TARGET]).sum())  # 0.21 clicks per impression
    runs, covered, values = 200, 0, []
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        log = simulate_rankings(rng, 1000)
        target = (log["item"] == np.array(TARGET)[log["position"]]).astype(float)
        got = ranking_ips(impression=log["impression"], logging_probability=log["logging"],
                          target_probability=target, reward=log["reward"], rng=rng,
                          resamples=RESAMPLES)  # fmt: skip
        assert got.rows == 1000
        assert got.value is not None
        assert got.low is not None
        assert got.high is not None
        values.append(got.value)
        covered += got.low <= truth <= got.high
    assert abs(np.mean(values) - truth) < 4 * np.std(values) / math.sqrt(runs)
    assert 0.90 <= covered / runs <= 0.99
    # the logging ranker itself, for contrast, earns less than the target
    assert float((EXAMINE * ATTRACT[BASE]).sum()) > truth


def test_ranking_with_no_rows() -> None:
    got = ranking_ips(impression=[], logging_probability=[], target_probability=[], reward=[],
                      rng=np.random.default_rng(0))  # fmt: skip
    assert (got.value, got.low, got.high, got.rows) == (None, None, None, 0)


def test_intervals_are_bca_as_scipy_computes_them() -> None:
    """On a plain mean (every row its own impression, probabilities 1), the interval is
    scipy's BCa bootstrap interval, up to the resampling noise of each."""
    rewards = np.random.default_rng(4).exponential(1.0, size=60)
    ones = np.ones(60)
    got = ranking_ips(impression=np.arange(60), logging_probability=ones,
                      target_probability=ones, reward=rewards,
                      rng=np.random.default_rng(5), resamples=20_000)  # fmt: skip
    expected = stats.bootstrap((rewards,), np.mean, n_resamples=20_000, method="BCa",
                               rng=np.random.default_rng(6)).confidence_interval  # fmt: skip
    assert got.value == pytest.approx(rewards.mean())
    assert got.low == pytest.approx(expected.low, abs=0.015)
    assert got.high == pytest.approx(expected.high, abs=0.015)
    # skewed data: the interval reaches further above the mean than below it
    assert got.low is not None
    assert got.high is not None
    assert got.high - rewards.mean() > rewards.mean() - got.low
