"""What a user meets around a run: presets that mean what they say, a context-length check before
any engine starts, a line when the data is small, a last line with the run's numbers, a progress
bar without "-0", and evaluations that never overwrite each other silently."""

import json
import math

import pytest
from test_data import drgrpo_help
from test_e2e import tiny_cfg

import drgrpo
from drgrpo import Config, resolve


def test_presets_set_what_their_papers_set_and_an_explicit_flag_wins():
    """--algo dapo: DAPO's token-level mean and its clip-higher ceiling 0.28; grpo and dr_grpo the
    PPO clip 0.2 (paper Eq. 1). A ceiling given on the command line is kept."""
    want = {"grpo": ("group", "seq_mean_token_mean", 0.2), "dapo": ("group", "token_mean", 0.28)}
    want["dr_grpo"] = ("none", "seq_mean_token_sum_norm", 0.2)
    for algo, (adv_norm, loss_agg, high) in want.items():
        cfg = resolve(Config(algo=algo))
        assert (cfg.adv_norm, cfg.loss_agg, cfg.clip_eps_high) == (adv_norm, loss_agg, high)
    assert resolve(Config(algo="dapo", clip_eps_high=0.25)).clip_eps_high == 0.25
    assert resolve(Config(algo="dapo", loss_agg="seq_mean_token_sum_norm")).loss_agg == (
        "seq_mean_token_sum_norm"
    )
    text = " ".join(drgrpo_help("train").split())
    assert (
        "dapo: group, token_mean, 0.28" in text and "dr_grpo: none, seq_mean_token_sum_norm" in text
    )
    assert "dynamic sampling and overlong reward shaping are not here" in text


def test_a_response_budget_past_the_models_context_is_one_line_before_vllm(
    tiny, tmp_path, capsys, monkeypatch
):
    """The tiny model has 512 positions; the default --max_new_tokens is the paper's 3000. One
    line names both numbers and the flag, exit code 2, and no vLLM engine is started."""
    started = []
    monkeypatch.setattr(drgrpo, "start_vllm", lambda *a, **kw: started.append(a))
    flags = ["--model", tiny["model"], "--train_data", tiny["data"], "--sampler", "vllm"]
    with pytest.raises(SystemExit) as stop:
        drgrpo.main(["train", *flags, "--out_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and not started
    longest = max(
        len(
            drgrpo.load_model(tiny["model"], "cpu")[1](
                drgrpo.apply_template("qwen_math", r["problem"])
            )["input_ids"]
        )
        for r in drgrpo.load_jsonl(tiny["data"], quiet=True)
    )
    line = (
        f"--max_new_tokens 3000 + the longest prompt ({longest} tokens) > the model's context (512)"
    )
    assert err == [f"drgrpo: error: {line}"]


def test_a_run_starts_with_a_small_data_line_and_ends_with_its_numbers(tiny, tmp_path, capsys):
    """8 problems, 4 prompts a step for 3 steps: each is drawn 1.5 times. The last line states
    the last steps' reward and lengths, the held-out accuracy and the checkpoint, from
    metrics.jsonl."""
    cfg = tiny_cfg(
        tiny, out_dir=str(tmp_path / "run"), steps=3, eval_every=3, eval_data=tiny["data"]
    )
    drgrpo.train(cfg)
    out = capsys.readouterr().out.strip().splitlines()
    assert "note: each of 8 problems is drawn 1.5 times in the run" in out
    lines = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    numbers = []
    for k in ("reward", "len_correct", "len_incorrect"):
        v = drgrpo.mean([m[k] for m in lines if m[k] is not None])
        numbers.append("-" if v is None else f"{v:.3g}")
    held = 100 * lines[-1]["eval/average/accuracy"]
    assert out[-1] == (
        f"step 3 of 3; last 5 steps: reward {numbers[0]} len_correct {numbers[1]} len_incorrect "
        f"{numbers[2]}; held-out accuracy {held:.1f}% (step 3); "
        f"checkpoint {tmp_path}/run/checkpoint-3"
    )


def test_a_run_stopped_early_also_ends_with_its_numbers(tiny, tmp_path, capsys, monkeypatch):
    """A run the doctor stops at step 2 of 5: the same line, then the reason (stderr)."""
    monkeypatch.setattr(
        drgrpo, "diagnose", lambda cfg, history: ("stub", 7) if len(history) == 2 else None
    )
    cfg = tiny_cfg(tiny, out_dir=str(tmp_path / "run"), steps=5)
    with pytest.raises(drgrpo.TrainingStopped):
        drgrpo.train(cfg)
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("step 2 of 5; last 5 steps: reward ")
    assert out[-1].endswith(f"; checkpoint {tmp_path}/run/checkpoint-2")


def test_the_progress_bar_shows_a_zero_loss_as_0(tmp_path):
    """A loss rounded to zero from below is -0.0, which tqdm prints as "-0"."""
    shown = {}

    class Bar:
        def set_postfix(self, values):
            shown.update(values)

    cfg = Config(out_dir=str(tmp_path), log_rollouts=0)
    m = {"step": 1, "reward": 0.5, "len_mean": 12.0, "loss": -1e-7}
    drgrpo.log_step(
        cfg,
        m,
        Bar(),
        rows=[],
        groups=[],
        rewards=drgrpo.torch.zeros(0, 8),
        advantages=drgrpo.torch.zeros(0, 8),
    )
    assert (
        shown["loss"] == 0 and math.copysign(1, shown["loss"]) == 1 and str(shown["loss"]) == "0.0"
    )


def test_an_evaluation_goes_beside_its_model_and_says_when_it_replaces_one(tiny, tmp_path, capsys):
    """Without --out_dir, eval writes beside the evaluated model directory (<model>-eval), so two
    models never share one eval.json; a second evaluation of the same model says it replaces
    the first."""
    flags = ["--model", tiny["model"], "--eval_data", tiny["data"], "--sampler", "hf"]
    flags += ["--max_new_tokens", "16"]
    where = f"{tiny['model']}-eval"
    drgrpo.main(["eval", *flags])
    first = capsys.readouterr().out
    assert f"wrote {where}/eval.json" in first and "replacing" not in first
    drgrpo.main(["eval", *flags])
    assert f"{where}/eval.json: replacing an earlier result" in capsys.readouterr().out


def test_top_p_below_1_is_said_at_start_up(tiny, tmp_path, capsys):
    """Nucleus samples come from a truncated distribution, and the update trains them as samples of
    the whole softmax: one start-up line says so (logprob_gap shows the difference)."""
    drgrpo.train(tiny_cfg(tiny, out_dir=str(tmp_path / "run"), steps=1, top_p=0.9))
    out = capsys.readouterr().out.splitlines()
    assert out.count("note: --top_p 0.9: the update treats nucleus samples as on-policy") == 1
    drgrpo.train(tiny_cfg(tiny, out_dir=str(tmp_path / "whole"), steps=1))
    assert "--top_p" not in capsys.readouterr().out
