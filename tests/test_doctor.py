"""The doctor: a real tiny-model run that cannot learn stops after DOCTOR_WINDOW steps with one
line that names the cause and the fix, its own exit code and a checkpoint that resumes; a healthy
run and --doctor false run on. (The off-policy check needs vLLM: tests/test_vllm.py.)"""

import json
import os
import re
from dataclasses import fields, replace

import pytest
from test_e2e import tiny_cfg

import drgrpo


def run_to_the_stop(cfg, capsys):
    """`python drgrpo.py train ...` with cfg's flags -> (exit code, the line it printed last)."""
    argv = [f"--{f.name}={getattr(cfg, f.name)}" for f in fields(cfg) if f.name != "eval_n"]
    with pytest.raises(SystemExit) as stop:
        drgrpo.main(["train", *argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("drgrpo:")]
    return stop.value.code, err[-1]


def resumes_and_runs_on(cfg, capsys, step):
    """--doctor false from the checkpoint the doctor saved: the run goes on from it."""
    drgrpo.train(replace(cfg, doctor=False, steps=step + 1))
    assert f"resuming from {cfg.out_dir}/checkpoint-{step} (step {step})" in capsys.readouterr().out
    lines = [json.loads(x) for x in open(os.path.join(cfg.out_dir, "metrics.jsonl"))]
    assert [m["step"] for m in lines] == list(range(1, step + 2))


def words_of(line):
    return line.split("step 3: ", 1)[1]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


QUESTIONS = [f"Pick 1 or 2{'!' * k}" for k in range(1, 9)]  # what the tiny model learned


@pytest.mark.parametrize(
    "case, flags, code, words",
    [
        (
            "cut",  # 2 tokens are too few for any answer
            dict(max_new_tokens=2),
            4,
            "100% of responses in the last 3 steps were cut at --max_new_tokens 2, and a cut "
            "response scores 0: raise --max_new_tokens",
        ),
        (
            "no answer",  # the model writes \boxed{}, never <answer> tags
            dict(template="r1", max_new_tokens=40),
            5,
            "only 0% of responses in the last 3 steps had an answer to grade (<answer> </answer>): "
            "is --template r1 the format this model answers in?",
        ),
        (
            "grader",  # no grade can arrive within a nanosecond: every one is a failure
            dict(grade_timeout=1e-9, lr=0.0),
            6,
            r"\d+% of responses in the last 3 steps timed out or crashed the grader: raise "
            "--grade_timeout or --grade_workers",
        ),
        (
            "too hard",  # the model answers 1 or 2; every gold is 7
            dict(train_data=[{"problem": q, "answer": "7"} for q in QUESTIONS]),
            7,
            "every group in the last 3 steps was all wrong: every advantage is 0, nothing to "
            "learn; the problems are too hard for this model",
        ),
        (
            "too easy",  # 1 and 2 are both accepted
            dict(train_data=[{"problem": q, "answer": "1", "answers": ["2"]} for q in QUESTIONS]),
            7,
            "every group in the last 3 steps was all right: every advantage is 0, nothing to "
            "learn; the problems are too easy for this model",
        ),
    ],
)
def test_a_run_that_cannot_learn_stops_saying_why(tiny, tmp_path, capsys, case, flags, code, words):
    if "train_data" in flags:
        flags = {**flags, "train_data": write(tmp_path / "data.jsonl", flags["train_data"])}
    cfg = tiny_cfg(tiny, out_dir=str(tmp_path / "run"), steps=10, **flags)
    exit_code, line = run_to_the_stop(cfg, capsys)
    checkpoint = f"{cfg.out_dir}/checkpoint-3"
    assert exit_code == code
    if case == "grader":  # a few grades may still arrive in time: the share varies
        share, words = re.match(r"(\d+)%", words_of(line)).group(1), words.replace(r"\d+", "", 1)
        assert int(share) >= 100 * drgrpo.MOST_FAILED and share + words in line
        words = share + words
    assert line == f"drgrpo: stopped: step 3: {words} (saved: {checkpoint})"
    assert drgrpo.checkpoints(cfg.out_dir) == [(3, checkpoint)]
    resumes_and_runs_on(cfg, capsys, step=3)


def test_non_finite_gradients_stop_after_three_steps(tiny, tmp_path, capsys, monkeypatch):
    """Every gradient NaN: every update skipped, the weights unchanged, exit 3."""
    real = drgrpo.accumulate_master_grads

    def nan_grads(model, work):
        real(model, work)
        for p in model.parameters():
            p.grad.fill_(float("nan"))

    monkeypatch.setattr(drgrpo, "accumulate_master_grads", nan_grads)
    cfg = tiny_cfg(tiny, out_dir=str(tmp_path / "run"), steps=10)
    exit_code, line = run_to_the_stop(cfg, capsys)
    why = "every update in the last 3 steps had a non-finite gradient and was skipped: lower --lr"
    assert (exit_code, line) == (
        3,
        f"drgrpo: stopped: step 3: {why} (saved: {cfg.out_dir}/checkpoint-3)",
    )
    monkeypatch.undo()
    resumes_and_runs_on(cfg, capsys, step=3)


def test_diagnose_needs_a_full_window_and_can_be_turned_off():
    cfg = drgrpo.resolve(drgrpo.Config(max_new_tokens=2))
    cut = dict(skipped_updates=0.0, truncated_frac=1.0, answer_frac=0.0, grade_failures=0)
    cut |= dict(zero_std_group_frac=1.0, all_correct_group_frac=0.0, all_wrong_group_frac=1.0)
    cut |= dict(logprob_gap=None)
    assert drgrpo.diagnose(cfg, [cut] * (drgrpo.DOCTOR_WINDOW - 1)) is None
    assert drgrpo.diagnose(cfg, [cut] * drgrpo.DOCTOR_WINDOW)[1] == 4
    assert drgrpo.diagnose(replace(cfg, doctor=False), [cut] * drgrpo.DOCTOR_WINDOW) is None
    # one healthy step in the window: a mean of 0.67 is under MOST_CUT, all-equal groups not all
    healthy = cut | dict(truncated_frac=0.0, answer_frac=1.0, zero_std_group_frac=0.5)
    assert drgrpo.diagnose(cfg, [cut, cut, healthy]) is None
