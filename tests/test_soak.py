"""The soak test (`make soak`, in CI; `make test` leaves it out): a 40-step run with a checkpoint
every step, SIGKILLed at seeded random moments, one of them while a checkpoint is being written,
and resumed each time, ends exactly as an unbroken run; and a run whose grading workers are killed
at random finishes with every grade right or counted in grade_failures. About 2 minutes on 2 cores.
"""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import fields, replace

import pytest
import torch
from test_e2e import tiny_cfg
from test_resume import TIMING, child_setup, launch, metrics, n_lines, wait_until

import drgrpo

pytestmark = pytest.mark.soak


def soak_cfg(tiny, out_dir):
    """The resume tests' shape (mixed rewards, 2 optimizer steps a rollout), 40 steps; the doctor
    off, so that the unbroken run goes all the way whatever the model learns."""
    return tiny_cfg(
        tiny,
        steps=40,
        save_every=1,
        lr=3e-3,
        prompts_per_rollout=8,
        group_size=8,
        train_batch_size=32,
        micro_batch_size=2,
        doctor=False,
        out_dir=out_dir,
    )


def writing_a_checkpoint(cfg):
    return any(name.endswith(".tmp") for name in os.listdir(cfg.out_dir))


# A tiny model's checkpoint is written in a few milliseconds, too fast to be sure a kill lands in
# it: for one launch, each fsync waits 50 ms first (the same bytes reach the disk, more slowly).
SLOW_FSYNC = """import os, time
fsync = os.fsync
def slow_fsync(fd):
    time.sleep(0.05)
    fsync(fd)
os.fsync = slow_fsync
"""


def launch_with_slow_fsync(cfg, log, site):
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SLOW_FSYNC)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.getcwd()])}
    names = [f.name for f in fields(cfg) if f.name != "eval_n"]  # train's flags
    flags = [arg for name in names for arg in (f"--{name}", str(getattr(cfg, name)))]
    cmd = [sys.executable, "drgrpo.py", "train", *flags]
    out = open(log, "w")
    return subprocess.Popen(cmd, stdout=out, stderr=out, env=env, preexec_fn=child_setup)


def test_killed_many_times_it_ends_as_the_unbroken_run(tiny, tmp_path):
    ref = soak_cfg(tiny, str(tmp_path / "unbroken"))
    drgrpo.train(ref)
    cfg = replace(ref, out_dir=str(tmp_path / "killed"))
    rng, kills, in_a_write = random.Random(2026), 0, False
    while kills < 5 or not in_a_write:
        assert kills < 12, "no kill landed inside a checkpoint write"
        done, log = n_lines(cfg), tmp_path / f"run{kills}.log"
        if kills == 2 or (kills >= 5 and not in_a_write):  # inside a checkpoint's write
            proc = launch_with_slow_fsync(cfg, log, tmp_path / "site")
            wait_until(lambda d=done: n_lines(cfg) > d and writing_a_checkpoint(cfg), proc)
        else:  # a seeded moment 1-3 steps on: sampling, grading, the update or a save
            proc = launch(cfg, log)
            target = min(done + rng.randint(1, 3), cfg.steps - 5)  # (never past the end)
            wait_until(lambda t=target: n_lines(cfg) >= t, proc)
            time.sleep(rng.random() * metrics(cfg)[-1]["step_s"])
        proc.kill()
        assert proc.wait() == -signal.SIGKILL
        in_a_write |= writing_a_checkpoint(cfg)  # the kill left a half-written checkpoint
        kills += 1
        assert n_lines(cfg) < cfg.steps, "the run ended before it was killed: shorten the waits"
    proc = launch(cfg, tmp_path / "last.log")
    assert proc.wait(timeout=600) == 0, (tmp_path / "last.log").read_text()[-2000:]
    # every metrics line (timings aside) and every logged response, and the final weights
    got, want = metrics(cfg), metrics(ref)
    assert [m["step"] for m in got] == list(range(1, 41))
    assert [{k: v for k, v in m.items() if k not in TIMING} for m in got] == [
        {k: v for k, v in m.items() if k not in TIMING} for m in want
    ]
    rollouts = [open(os.path.join(c.out_dir, "rollouts.jsonl")).read() for c in (cfg, ref)]
    assert rollouts[0] == rollouts[1]
    final = [os.path.join(c.out_dir, "checkpoint-40") for c in (cfg, ref)]
    a, b = (drgrpo.load_model(path, "cpu")[0].state_dict() for path in final)
    assert all(torch.equal(a[k], b[k]) for k in a)
    print(f"{kills} kills, each resumed; the last run went to the end")


def test_grading_workers_killed_at_random_every_grade_is_right_or_counted(tiny, tmp_path):
    cfg = replace(soak_cfg(tiny, str(tmp_path / "run")), steps=6, log_rollouts=-1)
    rng, stop = random.Random(7), threading.Event()

    def killer():  # SIGKILL a random grading worker every few milliseconds
        while not stop.wait(rng.uniform(0.001, 0.02)):
            alive = [proc for proc, _ in list(drgrpo.GRADERS) if proc.is_alive()]
            if alive:
                rng.choice(alive).kill()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        drgrpo.train(cfg)
    finally:
        stop.set()
        thread.join()
    lines = metrics(cfg)
    assert [m["step"] for m in lines] == list(range(1, 7))  # the run finished
    assert sum(m["grade_failures"] for m in lines) > 0, "no worker was killed mid-grade"
    logged = [json.loads(x) for x in open(os.path.join(cfg.out_dir, "rollouts.jsonl"))]
    for m in lines:  # a grade that differs from the grader's is a counted failure (scored 0)
        wrong = [
            x
            for r in logged
            if r["step"] == m["step"]
            for x in r["responses"]
            if x["reward"] != drgrpo.grade(x["text"], r["golds"], "qwen_math", x["truncated"])
        ]
        assert all(x["reward"] == 0.0 for x in wrong) and len(wrong) <= m["grade_failures"]
