"""Evaluation: the pass@k estimator, and `eval` end to end on the tiny
model with its files checked."""

import itertools
import json
import math

import pytest

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
    # 24 distinct questions (a repeated one would be skipped): the tiny model's
    # 8, and 16 more in the same style
    rows = [{"problem": f"Pick 1 or 2{'!' * k}", "answer": str(1 + k % 2)} for k in range(1, 25)]
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
            "--eval_size",
            "20",
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
        grades = [[x["grade"] for x in r["responses"]] for r in mine]
        assert results[name]["accuracy"] == pytest.approx(sum(map(sum, grades)) / (20 * n))
        tokens = [x["tokens"] for r in mine for x in r["responses"]]
        assert results[name]["len_mean"] == pytest.approx(sum(tokens) / len(tokens))
        for k in (2, 4):
            if k <= n:
                assert results[name][f"pass@{k}"] == pytest.approx(
                    sum(pass_at_k(n, int(sum(g)), k) for g in grades) / 20
                )
        for r in mine:  # each stored grade is what the grader says of the stored text
            for x in r["responses"]:
                assert x["grade"] == drgrpo.grade(
                    x["text"], r["golds"], "qwen_math", x["truncated"]
                )
    avg = results["average"]["accuracy"]
    assert avg == pytest.approx((results["set_a"]["accuracy"] + results["set_b"]["accuracy"]) / 2)
    assert not math.isnan(avg)


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
