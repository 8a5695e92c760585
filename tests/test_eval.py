"""Evaluation: the pass@k estimator, and `eval` end to end on the tiny
model with its files checked."""

import itertools
import json
import math

import pytest
import torch

import drgrpo

pass_at_k = drgrpo.pass_at_k  # `python drgrpo.py eval` reports it with --eval_n K


def test_pass_at_k_hand_computed():
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)  # 1 - C(2,2)/C(4,2)
    assert pass_at_k(5, 1, 1) == pytest.approx(0.2)  # k = 1 is the plain accuracy c/n
    assert pass_at_k(8, 0, 4) == 0.0 and pass_at_k(8, 8, 4) == 1.0 and pass_at_k(8, 5, 4) == 1.0


@pytest.mark.parametrize("n,c,k", [(6, 2, 3), (7, 1, 4), (5, 3, 2), (8, 1, 8)])
def test_pass_at_k_equals_the_average_over_all_k_subsets(n, c, k):
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


@pytest.mark.parametrize("n", [1, 4])
def test_eval_writes_consistent_table_and_files(tiny, tmp_path, capsys, n):
    # 20 distinct questions (a repeated one would be skipped): the tiny model's
    # 8, and 12 more in the same style
    rows = [{"problem": f"Pick 1 or 2{'!' * k}", "answer": str(1 + k % 2)} for k in range(1, 21)]
    files = []
    for name in ("set_a", "set_b"):
        p = tmp_path / f"{name}.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        files.append(str(p))
    out = tmp_path / f"out{n}"
    drgrpo.main(
        [
            "eval",
            "--model",
            tiny["model"],
            "--eval_data",
            ",".join(files),
            "--n",
            str(n),
            "--sampler",
            "hf",
            "--max_new_tokens",
            "16",
            "--out_dir",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert "set_a" in printed and "set_b" in printed and "average" in printed
    results = json.load(open(out / "eval.json"))["results"]
    records = [json.loads(line) for line in open(out / "eval_responses.jsonl")]
    for name in ("set_a", "set_b"):
        mine = [r for r in records if r["benchmark"] == name]
        assert (
            len(mine) == 20
            and all(len(r["responses"]) == n for r in mine)
            and results[name]["grade_failures"] == 0
        )
        grades = [[x["reward"] for x in r["responses"]] for r in mine]
        assert results[name]["accuracy"] == pytest.approx(sum(map(sum, grades)) / (20 * n))
        tokens = [x["tokens"] for r in mine for x in r["responses"]]
        assert results[name]["len_mean"] == pytest.approx(sum(tokens) / len(tokens))
        for k in (2, 4):
            if k <= n:
                assert results[name][f"pass@{k}"] == pytest.approx(
                    sum(pass_at_k(n, int(sum(g)), k) for g in grades) / 20
                )
        for r in mine:  # each stored grade is the grader's, a cut response graded as written
            for x in r["responses"]:
                assert x["reward"] == drgrpo.grade(x["text"], r["golds"], "qwen_math")
        low, high = results[name]["accuracy_ci"]
        assert low <= results[name]["accuracy"] <= high and high - low > 0
        assert (f"avg@{n}" in results[name]) == (n > 1)
    avg = results["average"]["accuracy"]
    low, high = results["average"]["accuracy_ci"]
    assert low <= avg <= high and high - low < max(
        h - lo for lo, h in (results[s]["accuracy_ci"] for s in ("set_a", "set_b"))
    )  # two sets: a narrower interval
    assert avg == pytest.approx((results["set_a"]["accuracy"] + results["set_b"]["accuracy"]) / 2)
    assert not math.isnan(avg)
    printed_avg = next(line for line in printed.splitlines() if line.strip().startswith("average"))
    assert f"{100 * avg:.1f} ± {50 * (high - low):.1f}" in printed_avg


def test_bootstrap_hand_computed_cases():
    """Two problems, one right: a resample holds 0, 1 or 2 right ones with probability 1/4, 1/2,
    1/4, so its accuracy is 0, 0.5 or 1 and the central 95% spans [0, 1]. One problem with two
    samples, one right: resampling problems alone never moves (always that problem), resampling
    its samples gives 0, 0.5, 1 as above. All right: [1, 1]."""
    boot = drgrpo.bootstrap
    acc = boot(torch.tensor([[1.0], [0.0]]), seed=0)
    shares = [(acc == v).float().mean().item() for v in (0.0, 0.5, 1.0)]
    assert shares == pytest.approx([0.25, 0.5, 0.25], abs=0.03)
    assert drgrpo.interval(acc) == (0.0, 1.0)
    acc = boot(torch.tensor([[1.0, 0.0]]), seed=0)
    shares = [(acc == v).float().mean().item() for v in (0.0, 0.5, 1.0)]
    assert shares == pytest.approx([0.25, 0.5, 0.25], abs=0.03)
    assert drgrpo.interval(boot(torch.tensor([[1.0]] * 5))) == (1.0, 1.0)
    # 100 problems, half right: the normal approximation's 95% interval is 0.5 +- 1.96 x 0.05
    low, high = drgrpo.interval(boot(torch.tensor([[1.0]] * 50 + [[0.0]] * 50), seed=3))
    assert low == pytest.approx(0.402, abs=0.02) and high == pytest.approx(0.598, abs=0.02)
    # seeded: the same numbers again, other ones under another seed
    grades = torch.tensor([[1.0, 0.0, 1.0]] * 7 + [[0.0, 0.0, 1.0]] * 6)
    assert torch.equal(boot(grades, seed=1), boot(grades, seed=1))
    assert not torch.equal(boot(grades, seed=1), boot(grades, seed=2))


def test_eval_grades_cut_responses_unless_asked_not_to(tiny, tmp_path):
    """The paper's evaluation grades whatever was generated; --eval_grade_cut false scores a cut
    response 0, as training always does. The tiny model answers in ~10 tokens: cut at 9."""
    data = tmp_path / "q.jsonl"
    data.write_text(
        "".join(
            json.dumps({"problem": f"Pick 1 or 2{'!' * k}", "answer": "1"}) + "\n"
            for k in range(1, 9)
        )
    )
    results = {}
    for cut in ("true", "false"):
        out = tmp_path / cut
        args = ["eval", "--model", tiny["model"], "--eval_data", str(data), "--sampler", "hf"]
        drgrpo.main(
            args + ["--max_new_tokens", "9", "--eval_grade_cut", cut, "--out_dir", str(out)]
        )
        results[cut] = [json.loads(line) for line in open(out / "eval_responses.jsonl")]
    graded = [x for r in results["true"] for x in r["responses"]]
    cut_right = [x for x in graded if x["truncated"] and x["reward"] == 1.0]
    assert cut_right, "no cut response with a right answer: the test shows nothing"
    zeroed = [x for r in results["false"] for x in r["responses"]]
    assert [x["text"] for x in zeroed] == [x["text"] for x in graded]  # greedy: the same text
    assert all(x["reward"] == 0.0 for x in zeroed if x["truncated"])


def test_eval_every_logs_held_out_numbers_during_training(tiny):
    cfg = drgrpo.Config(
        model=tiny["model"],
        train_data=tiny["data"],
        eval_data=tiny["data"],
        eval_every=1,
        out_dir=str(tiny["dir"] / "eval_every"),
        sampler="hf",
        group_size=4,
        prompts_per_rollout=4,
        max_new_tokens=16,
        train_batch_size=16,
        micro_batch_size=8,
        steps=2,
        gradient_checkpointing=False,
        save_every=0,
    )
    drgrpo.train(cfg)
    lines = [json.loads(line) for line in open(f"{cfg.out_dir}/metrics.jsonl")]
    for m in lines:
        assert (
            0 <= m["eval/train/accuracy"] <= 1
            and m["eval/average/accuracy"] == m["eval/train/accuracy"]
        )
        assert m["eval/train/len_mean"] > 0 and "eval/train/truncated_frac" in m
