"""End to end on a tiny model built here: sampling, two RL steps,
checkpoints, micro-batch invariance."""

import copy
import json
import math
import random

import pytest
import torch
from test_update_levers import plain_logprobs

import drgrpo
from drgrpo import Completion, Config, Sample, train


def tiny_cfg(tiny, **kw):
    base = dict(
        model=tiny["model"],
        train_data=tiny["data"],
        out_dir=str(tiny["dir"] / "run"),
        sampler="hf",
        group_size=4,
        prompts_per_rollout=4,
        max_new_tokens=16,
        lr=1e-2,
        train_batch_size=8,
        micro_batch_size=4,
        steps=2,
        gradient_checkpointing=False,
        save_every=0,
    )
    return Config(**{**base, **kw})


def test_sampler_gives_g_completions_and_flags_truncation(tiny):
    model, tok = drgrpo.load_model(tiny["model"], "cpu")
    sampler = drgrpo.HFSampler(model, tok, "qwen_math")
    prompts = [drgrpo.apply_template("qwen_math", q) for q in ("Pick 1 or 2!", "Pick 1 or 2!!")]
    groups = sampler.generate(prompts, 5, max_new_tokens=16, seed=1)
    assert [len(g) for g in groups] == [5, 5]
    finished = [c for g in groups for c in g if not c.truncated]
    assert finished and all(c.token_ids[-1] in drgrpo.stop_token_ids(tok) for c in finished)
    # too short to finish: every one is cut
    short = sampler.generate(prompts, 3, max_new_tokens=2, seed=1)
    assert all(c.truncated and len(c.token_ids) == 2 for g in short for c in g)
    # cut one token before its EOS, a reply holds its whole answer and grades 0 only for the cut
    full = sampler.generate(prompts[:1], 1, 16, temperature=0)[0][0]
    cut = sampler.generate(prompts[:1], 1, len(full.token_ids) - 1, temperature=0)[0][0]
    answer = drgrpo.extract_answer(full.text, "qwen_math")
    assert not full.truncated and cut.truncated and cut.text == full.text and answer in ("1", "2")
    assert drgrpo.grade(cut.text, answer, "qwen_math") == 1.0
    assert drgrpo.grade(cut.text, answer, "qwen_math", cut.truncated) == 0.0
    # greedy is deterministic
    assert [c.token_ids for c in sampler.generate(prompts, 1, 16, temperature=0)[0]] == [
        c.token_ids for c in sampler.generate(prompts, 1, 16, temperature=0)[0]
    ]


@pytest.mark.parametrize("algo", ["dr_grpo", "grpo"])
def test_two_rl_steps_update_log_and_save(tiny, algo):
    """Two steps of train() whose rollouts both have mixed groups, so both updates are real: each
    logs its metrics, the 2nd optimizer step of a rollout clips (pi_old kept), and the checkpoint
    is a plain transformers one with changed weights. (lr 3e-3: at 1e-2 the first step wrecks this
    tiny model, and every 2nd-step response runs to the length limit and scores 0.)"""
    cfg = tiny_cfg(
        tiny,
        algo=algo,
        lr=3e-3,
        clip_eps_low=0.02,
        clip_eps_high=0.02,
        out_dir=str(tiny["dir"] / algo),
    )
    start = {
        k: v.clone() for k, v in drgrpo.load_model(tiny["model"], "cpu")[0].state_dict().items()
    }
    ckpt = train(cfg)
    lines = [json.loads(line) for line in open(f"{cfg.out_dir}/metrics.jsonl")]
    assert [m["step"] for m in lines] == [1, 2]
    for m in lines:
        assert math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])
        for key in (
            "reward",
            "accuracy",
            "len_correct",
            "len_incorrect",
            "truncated_frac",
            "zero_std_group_frac",
            "clip_frac",
            "entropy",
            "kl",
            "step_s",
            "tokens_per_s",
            "grade_failures",
        ):
            assert key in m
    for m in lines:  # mixed groups in both rollouts: both optimizer updates really move
        assert 0 < m["reward"] < 1 and m["zero_std_group_frac"] < 1, m
        assert m["trained_frac"] > 0 and m["grad_norm"] > 0, m
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(ckpt)  # a plain transformers checkpoint
    AutoTokenizer.from_pretrained(ckpt)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, start[k])]
    assert changed, "RL steps did not change any weight"
    # 8 responses per optimizer step out of 16 per rollout: 2 updates. The 2nd one's ratio is
    # measured against the sampling policy, has moved past 1 +- 0.02, and some tokens are clipped
    assert all(m["clip_frac"] > 0 for m in lines), [m["clip_frac"] for m in lines]


def test_kl_and_several_epochs_run(tiny, monkeypatch):
    """--kl_beta with 2 epochs of 2 optimizer steps a rollout: each optimizer step logs the k3
    KL to the start model, recomputed here from a plain forward of each response: 0 at the first
    step (the policy is the reference), then above 0; metrics.jsonl has the mean of a rollout's 4
    values."""
    start = drgrpo.load_model(tiny["model"], "cpu")[0]
    real, expected, logged = drgrpo.optimizer_step, [], []

    def checked_step(model, optimizer, batch, *a, **kw):
        with torch.no_grad():
            ref_logp, logp = (torch.cat(plain_logprobs(m, batch)[0]) for m in (start, model))
            d = ref_logp - logp
            expected.append((torch.exp(d) - d - 1).mean().item())
        stats = real(model, optimizer, batch, *a, **kw)
        logged.append(stats["kl"])
        return stats

    monkeypatch.setattr(drgrpo, "optimizer_step", checked_step)
    cfg = tiny_cfg(
        tiny, lr=3e-3, kl_beta=0.1, epochs_per_rollout=2, out_dir=str(tiny["dir"] / "kl")
    )
    train(cfg)
    lines = [json.loads(line) for line in open(f"{cfg.out_dir}/metrics.jsonl")]
    assert len(logged) == 2 * 4  # 2 steps x 2 epochs x 2 optimizer batches
    assert logged[0] == pytest.approx(0, abs=1e-7)
    assert logged == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert min(logged[1:]) > 1e-4  # the policy moved away from the frozen reference
    assert [m["kl"] for m in lines] == pytest.approx([sum(logged[:4]) / 4, sum(logged[4:]) / 4])


@pytest.mark.parametrize("loss_agg", drgrpo.LOSS_AGGS)
def test_loss_and_update_identical_across_micro_batch_sizes(tiny, loss_agg):
    model, tok = drgrpo.load_model(tiny["model"], "cpu")
    rng = random.Random(0)
    batch = [
        Sample(
            [5, 6, 7][: rng.randint(1, 3)],
            Completion([rng.randint(3, 30) for _ in range(n)], "", False),
            0.0,
            rng.uniform(-1, 1),
        )
        for n in (1, 3, 4, 7, 2, 9, 5, 8)
    ]
    results = []
    for mbs in (1, 2, 3, 4, 8):  # 3: micro-batches of 3, 3 and 2
        m = copy.deepcopy(model)
        cfg = drgrpo.resolve(
            Config(
                loss_agg=loss_agg,
                micro_batch_size=mbs,
                train_batch_size=8,
                prompts_per_rollout=1,
                max_new_tokens=16,
                grad_clip=1e9,
            )
        )
        opt = torch.optim.SGD(m.parameters(), lr=1.0)
        stats = drgrpo.optimizer_step(m, opt, batch, cfg, tok.pad_token_id, None)
        results.append((stats["loss"], torch.cat([p.detach().flatten() for p in m.parameters()])))
    for loss, params in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-5, abs=1e-7)
        assert torch.allclose(params, results[0][1], atol=1e-6)
    assert not torch.equal(results[0][1], torch.cat([p.flatten() for p in model.parameters()]))


def test_plot_draws_runs(tiny, tmp_path):
    pytest.importorskip(
        "matplotlib", reason="matplotlib is an optional extra (make install brings it)"
    )
    runs = []
    for name in ("dr_grpo", "grpo"):  # two short runs to draw
        cfg = tiny_cfg(tiny, algo=name, out_dir=str(tmp_path / name))
        train(cfg)
        runs.append(cfg.out_dir)
    drgrpo.main(["plot", *runs])
    png = tmp_path / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_nan_gradients_skip_updates_then_stop_with_a_checkpoint(tiny, monkeypatch, capsys):
    real = drgrpo.aggregate_loss
    # a loss gone bad
    monkeypatch.setattr(drgrpo, "aggregate_loss", lambda *a, **kw: real(*a, **kw) * float("nan"))
    cfg = tiny_cfg(tiny, steps=6, out_dir=str(tiny["dir"] / "nan"))
    with pytest.raises(drgrpo.TrainingStopped, match="last 3 steps had a non-finite gradient"):
        train(cfg)
    lines = [json.loads(line) for line in open(f"{cfg.out_dir}/metrics.jsonl")]
    assert [m["skipped_updates"] for m in lines] == [1.0, 1.0, 1.0]
    start = drgrpo.load_model(tiny["model"], "cpu")[0].state_dict()
    saved = drgrpo.load_model(f"{cfg.out_dir}/checkpoint-3", "cpu")[0].state_dict()
    # no NaN ever reached the weights
    assert all(torch.equal(v, start[k]) for k, v in saved.items())
    # the cause is fixed: the stop's checkpoint is a full one, and the run goes on from it
    monkeypatch.undo()
    train(cfg)
    assert f"resuming from {cfg.out_dir}/checkpoint-3 (step 3)" in capsys.readouterr().out
    assert [json.loads(line)["step"] for line in open(f"{cfg.out_dir}/metrics.jsonl")] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
