"""What a user meets around a run: presets that mean what they say, a context-length check before
any engine starts, a line when the data is small, a last line with the run's numbers, a progress
bar without "-0", and evaluations that never overwrite each other silently."""

import json
import math
from dataclasses import replace

import pytest
from conftest import load_script
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


def toml_file(path, values):
    """A --config file: one `key = value` line a setting (JSON's strings, numbers and booleans are
    TOML's)."""
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return str(path)


def test_settings_in_a_file_with_a_flag_winning_are_saved_and_repeat_the_run(
    tiny, tmp_path, capsys
):
    """--config FILE: its values, and a flag on the command line over one of them. The run prints
    what is not the paper's default and saves every setting, --algo's preset filled in, in
    <out_dir>/config.toml; that file given back to --config (with another --out_dir) runs the
    same first step."""
    mine = tiny_cfg(tiny, steps=1, out_dir=str(tmp_path / "first"))
    in_file = {k: v for k, v in vars(mine).items() if v != getattr(Config, k) and k != "out_dir"}
    config = toml_file(tmp_path / "mine.toml", in_file | {"lr": 0.5, "seed": 3})
    first = ["--config", config, "--lr", "0.01", "--out_dir", str(tmp_path / "first")]
    assert drgrpo.parse_args(["train", *first]) == ("train", replace(mine, seed=3))
    drgrpo.main(["train", *first])
    saved = tmp_path / "first" / "config.toml"
    assert drgrpo.read_config(str(saved)) == vars(resolve(replace(mine, seed=3)))
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith("settings in ")] == [
        f"settings in {saved}; not the defaults: loss_norm_const=16 group_size=4 "
        "prompts_per_rollout=4 max_new_tokens=16 lr=0.01 train_batch_size=8 "
        f"model={tiny['model']} train_data={tiny['data']} "
        f"out_dir={tmp_path}/first steps=1 seed=3 sampler=hf gradient_checkpointing=False "
        "save_every=0"
    ]
    drgrpo.main(["train", "--config", str(saved), "--out_dir", str(tmp_path / "again")])

    def first_step(run):
        m = json.loads(open(tmp_path / run / "metrics.jsonl").readline())
        return {k: v for k, v in m.items() if not k.endswith("_s")}  # not the timings

    assert first_step("again") == first_step("first")


@pytest.mark.parametrize(
    "text,message",
    [
        (
            "lr = 1e-5\nlearning_rate = 1e-5\n",
            "unknown key 'learning_rate' (`drgrpo.py train --help` lists them)",
        ),
        ('steps = "ten"\n', "steps = 'ten': must be of type int"),
        ("steps = 2.5\n", "steps = 2.5: must be of type int"),
        ("gradient_checkpointing = 0\n", "gradient_checkpointing = 0: must be of type bool"),
        ("lr = 1e-5\nlr = 2e-5\n", "Cannot overwrite a value (at line 2, column 10)"),
        ("lr = \n", "Invalid value (at line 1, column 6)"),
    ],
)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_bad_settings_file_is_one_line_naming_it_and_the_key(
    mode, text, message, tmp_path, capsys
):
    """An unknown key, a value of the wrong type, or a file that is not TOML: one line that names
    the file (and the key), exit code 2, before anything loads. An int is a float (lr = 1)."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SystemExit) as stop:
        drgrpo.main([mode, "--config", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    prefix = f"--config {path}: " if "at line" in message else f"{path}: "
    assert stop.value.code == 2 and err == [f"drgrpo: error: {prefix}{message}"]


def test_a_missing_settings_file_and_an_int_for_a_float(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        drgrpo.main(["train", "--config", str(tmp_path / "none.toml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2
    assert err == [f"drgrpo: error: --config {tmp_path}/none.toml: No such file or directory"]
    cfg = drgrpo.parse_args(["train", "--config", toml_file(tmp_path / "a.toml", {"lr": 1})])[1]
    assert cfg.lr == 1


def test_the_demo_takes_every_setting_from_its_file():
    """`make demo` passes --config data/arith/demo.toml and only --algo, --model, --out_dir and
    --resume besides; every key of the file is a flag's, with its type."""
    demo = load_script("data/arith/demo.py")
    assert demo.CONFIG == ["--config", "data/arith/demo.toml"] and demo.TRAIN == [
        "--resume",
        "never",
    ]
    values = drgrpo.read_config("data/arith/demo.toml")
    cfg = drgrpo.parse_args(["train", *demo.CONFIG])[1]
    assert {k: getattr(cfg, k) for k in values} == values and values["steps"] == 40
