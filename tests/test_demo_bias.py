"""`make demo`'s result in small: on the demo's own data, through drgrpo.train and
the same settings but a smaller tiny Qwen2 and fewer RL steps, GRPO's incorrect responses
grow longer and Dr. GRPO's do not.

The two runs start from one base model and differ only in --algo. The reward is the
verifier's 0/1 (no length term); the length the model can change is the number of hedges ("I
am not sure. It is a guess. ...") inside a guess, which does not change whether the answer is
right (data/arith/prepare.py).

Bounds, measured with RL seeds 0, 1, 2 on this file's base model on a 2-core AVX2 CPU, with
the pre-training in length-sorted micro-batches, lr 3e-4 and drgrpo's fused log-prob head
(incorrect-response length, mean of the first 3 steps -> last 5 steps; the test runs seed 0):
  seed | GRPO                 | Dr. GRPO             | GRPO / Dr. GRPO, | reward first 3 -> last 3
       |                      |                      | last 5           | (GRPO; Dr.)
     0 | 15.7 -> 19.9 (1.27x) | 14.1 -> 13.9 (0.99x) | 1.43             | 0.43 -> 0.68; 0.40 -> 0.59
     1 | 15.4 -> 18.2 (1.18x) | 14.5 -> 13.5 (0.93x) | 1.35             | 0.36 -> 0.64; 0.38 -> 0.68
     2 | 14.4 -> 23.2 (1.61x) | 13.7 -> 14.3 (1.04x) | 1.62             | 0.42 -> 0.64; 0.41 -> 0.63
Floating-point kernels differ between CPUs, so the same seed can give other numbers on another
machine (the base before the fused head gave GRPO 1.39-1.63x, Dr. GRPO 0.92-1.01x here; another
2-core CPU, earlier, GRPO 1.25-1.38x). At least 20% of every step's responses were wrong, and few
were truncated (at most 0.3% of a run, 2.3% of one step), so the growth is not responses running
into max_new_tokens. The full demo (40 steps of 48 prompts, 4 layers) shows the same, larger:
README, "What `make demo` shows".
"""

import json

import pytest
from conftest import arith

import drgrpo

# The demo's settings (data/arith/demo.toml: data, template, G, max_new_tokens, lr), smaller: 2
# layers instead of 4, 300 pre-training steps instead of 400, 20 RL steps of 16 prompts instead of
# 40 of 48.
PRETRAIN = dict(steps=300, batch=128, lr=5e-3, hidden=128, layers=2, heads=4)
SMALLER = ["--prompts_per_rollout", "16", "--train_batch_size", "128", "--steps", "20"]


def incorrect_len(lines):
    """Mean length of the incorrect sampled responses: over the first 3 steps (one step of 128
    responses is a noisy start) and over the last 5."""

    def mean(ms):
        return sum(m["len_incorrect"] for m in ms) / len(ms)

    return mean(lines[:3]), mean(lines[-5:])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo_bias")
    rows = [json.loads(line) for line in open("data/arith/pretrain.jsonl")]
    base = arith.pretrain_tiny(str(d / "base"), rows=rows, template=arith.TEMPLATE, **PRETRAIN)
    out = {}
    for algo in ("dr_grpo", "grpo"):
        argv = ["train", "--config", "data/arith/demo.toml", *SMALLER, "--algo", algo]
        argv += ["--model", base, "--out_dir", str(d / algo), "--resume", "never"]
        cfg = drgrpo.parse_args(argv)[1]
        assert (cfg.template, cfg.seed) == (arith.TEMPLATE, 0)  # pre-trained for that template
        drgrpo.train(cfg)
        out[algo] = [json.loads(line) for line in open(d / algo / "metrics.jsonl")]
    return out


def test_grpo_incorrect_responses_grow(runs):
    start, end = incorrect_len(runs["grpo"])
    assert end > 1.12 * start, (start, end)  # measured 1.18x-1.61x


def test_dr_grpo_incorrect_responses_stay_flat(runs):
    start, end = incorrect_len(runs["dr_grpo"])
    assert 0.85 * start < end < 1.12 * start, (start, end)  # measured 0.93x-1.04x


def test_grpo_ends_longer_than_dr_grpo(runs):
    # measured 1.35x-1.62x
    assert incorrect_len(runs["grpo"])[1] > 1.15 * incorrect_len(runs["dr_grpo"])[1]


def test_both_learn_and_wrong_answers_stay_common(runs):
    for algo, lines in runs.items():
        first, last = (sum(m["reward"] for m in ms) / len(ms) for ms in (lines[:3], lines[-3:]))
        assert last > first, algo  # measured +0.19 to +0.30
        # hard problems stay wrong 2 times in 3
        assert min(1 - m["accuracy"] for m in lines) > 0.1, algo
        assert max(m["truncated_frac"] for m in lines) < 0.05, algo
