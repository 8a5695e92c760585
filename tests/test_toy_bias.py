"""The toy (tests/toy_bias.py) asserted: GRPO's length drift and difficulty reweighting, and
Dr. GRPO without them.

Bounds, and why they are safe. Under Dr. GRPO the gradient on the length parameters has zero mean
(reward ignores length), so lengths only random-walk with Adam's noise: over 8 seeds x 300 steps the
largest excursion was 2.1 tokens, and the test allows 4. Under GRPO the drift is systematic: correct
responses shrink by ~6.9 tokens (9.3 -> 2.4) and incorrect ones grow by ~25 (9.3 -> 34), identical
to 0.1 token across those seeds; the test asks for 5 and 15. Both algorithms learn the right/wrong
choice equally (accuracy 50% -> ~87%), so the contrast is not one of them standing still. Seeds are
fixed, so a run is also repeatable.
"""

import math

import pytest
import toy_bias  # noqa: E402

START = toy_bias.expected_length(toy_bias.START_STOP_LOGIT)


@pytest.fixture(scope="module")
def runs():
    return {algo: toy_bias.train(algo, seed=0) for algo in ("grpo", "dr_grpo")}


def test_grpo_shortens_correct_and_lengthens_incorrect_responses(runs):
    end = runs["grpo"][-1]
    assert end["len_correct"] < START - 5
    assert end["len_incorrect"] > START + 15
    lengths = [h["len_incorrect"] for h in runs["grpo"]]
    # a steady drift, not a jump
    assert lengths[150] > lengths[50] + 3 and lengths[-1] > lengths[150]


def test_dr_grpo_lengths_stay_flat(runs):
    for h in runs["dr_grpo"]:
        assert abs(h["len_correct"] - START) < 4 and abs(h["len_incorrect"] - START) < 4


def test_both_learn_to_be_right(runs):
    for algo, h in runs.items():
        assert h[0]["accuracy"] < 0.55 and h[-1]["accuracy"] > 0.8, algo


def test_difficulty_bias_is_the_1_over_std_form():
    grpo, dr = toy_bias.question_weights(algo="grpo"), toy_bias.question_weights(algo="dr_grpo")
    G = 8
    for p in grpo:
        k = round(p * G)
        std = math.sqrt(k * (G - k) / (G * (G - 1)))  # unbiased std of k ones and G-k zeros
        assert grpo[p] / dr[p] == pytest.approx(1 / std, rel=1e-5)
        # proportional to the variance
        assert dr[p] == pytest.approx(0.5 * 2 * k * (G - k) / G / G, rel=1e-5)
    # relative to the 4-of-8 question, GRPO up-weights the 1-of-8 (hard) and 7-of-8 (easy) ones;
    # Dr. GRPO does not
    assert grpo[1 / 8] / grpo[4 / 8] > dr[1 / 8] / dr[4 / 8] * 1.5
    assert grpo[7 / 8] == pytest.approx(grpo[1 / 8])
