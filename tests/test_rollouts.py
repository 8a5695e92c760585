"""rollouts.jsonl: what each step sampled, as whole groups, with the reward and advantage the
update used (a run's resume-exactness is checked in tests/test_resume.py)."""

import json
import os

import torch
from test_e2e import tiny_cfg

import drgrpo


def lines(cfg):
    path = os.path.join(cfg.out_dir, "rollouts.jsonl")
    return [json.loads(x) for x in open(path)] if os.path.exists(path) else []


def test_log_rollouts_keeps_whole_groups_with_their_rewards_and_advantages(tiny, tmp_path):
    # 5 responses at G = 4: two whole groups a step, of the 4 prompts
    cfg = tiny_cfg(tiny, out_dir=str(tmp_path / "five"), log_rollouts=5, steps=2)
    drgrpo.train(cfg)
    logged = lines(cfg)
    assert [r["step"] for r in logged] == [1, 1, 2, 2]
    metrics = [json.loads(x) for x in open(os.path.join(cfg.out_dir, "metrics.jsonl"))]
    problems = {r["problem"] for r in drgrpo.load_jsonl(cfg.train_data)}
    for r in logged:
        assert r["problem"] in problems and len(r["responses"]) == cfg.group_size
        rewards = torch.tensor([[x["reward"] for x in r["responses"]]])
        advantages = drgrpo.group_advantages(rewards, "none")[0].tolist()  # Dr. GRPO's
        for x, adv in zip(r["responses"], advantages, strict=True):
            assert x["reward"] == drgrpo.grade(x["text"], r["golds"], "qwen_math", x["truncated"])
            assert x["advantage"] == adv and x["tokens"] > 0
            assert x["answer"] == drgrpo.extract_answer(x["text"], "qwen_math")
    # the logged groups are the step's first prompts: with all four logged, the same two first
    everything = tiny_cfg(tiny, out_dir=str(tmp_path / "all"), log_rollouts=-1, steps=2)
    drgrpo.train(everything)
    all_lines = lines(everything)
    assert [r["step"] for r in all_lines] == [1] * 4 + [2] * 4
    assert all_lines[:2] == logged[:2] and all_lines[4:6] == logged[2:]
    # the logged rewards are the step's: their mean over all four groups is the metric
    for step, m in enumerate(metrics, 1):
        step_rewards = [x["reward"] for r in all_lines if r["step"] == step for x in r["responses"]]
        assert sum(step_rewards) / len(step_rewards) == m["reward"]
    none = tiny_cfg(tiny, out_dir=str(tmp_path / "none"), log_rollouts=0, steps=1)
    drgrpo.train(none)
    assert lines(none) == []
