"""A crash, Ctrl-C, NaN or full disk never loses a run: atomic checkpoints, --resume, and a resumed
run that gives exactly the numbers of an unbroken one."""

import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import fields, replace

import pytest
import torch
from conftest import load_script
from test_e2e import tiny_cfg

import drgrpo
from drgrpo import Config, train

# the only fields that may differ
TIMING = {"sample_s", "reward_s", "update_s", "sync_s", "step_s", "tokens_per_s"}


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """The unbroken run every interrupted one must reproduce: 4 steps of 2 optimizer steps (so
    pi_old is stored), checkpoints at 2 and 4, mixed rewards throughout (so every step has a
    real gradient), ~0.25 s a step."""
    cfg = tiny_cfg(
        tiny,
        steps=4,
        save_every=2,
        lr=3e-3,
        prompts_per_rollout=8,
        group_size=8,
        train_batch_size=32,
        micro_batch_size=2,
        out_dir=str(tmp_path_factory.mktemp("reference")),
    )
    train(cfg)
    assert all(0 < m["reward"] < 1 and m["grad_norm"] > 0 for m in metrics(cfg))
    return cfg


def launch(cfg, log):
    """`python drgrpo.py train` with every Config field as a flag (train's: not eval_n), as a user
    would start it."""
    names = [f.name for f in fields(Config) if f.name != "eval_n"]
    flags = [arg for name in names for arg in (f"--{name}", str(getattr(cfg, name)))]
    return subprocess.Popen(
        [sys.executable, "drgrpo.py", "train", *flags],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        preexec_fn=child_setup,
    )


def child_setup():
    # Ctrl-C as in a terminal, even if pytest runs with it ignored
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # on a busy CPU the watching test gets its turn first: the kill lands when it is meant to
    os.nice(10)


def wait_until(condition, proc, timeout=300):
    t = time.time()
    while not condition():
        assert proc.poll() is None, (
            f"the run ended (exit {proc.returncode}) before the moment it was waited for"
        )
        assert time.time() - t < timeout, "timed out"
        time.sleep(0.005)


def n_lines(cfg):
    path = os.path.join(cfg.out_dir, "metrics.jsonl")
    return open(path, "rb").read().count(b"\n") if os.path.exists(path) else 0


def metrics(cfg):
    return [json.loads(line) for line in open(os.path.join(cfg.out_dir, "metrics.jsonl"))]


def assert_same_run(cfg, ref):
    """Every non-timing metric of every step equal (exactly, ==), every logged response, and the
    final weights and Adam state bit-equal."""
    got, want = metrics(cfg), metrics(ref)
    rollouts = [open(os.path.join(c.out_dir, "rollouts.jsonl")).read() for c in (cfg, ref)]
    assert rollouts[0] == rollouts[1] and rollouts[0].count("\n") == ref.steps * 2  # 16 / G
    assert [m["step"] for m in got] == list(range(1, ref.steps + 1))
    assert [{k: v for k, v in m.items() if k not in TIMING} for m in got] == [
        {k: v for k, v in m.items() if k not in TIMING} for m in want
    ]
    final = [os.path.join(c.out_dir, f"checkpoint-{ref.steps}") for c in (cfg, ref)]
    a, b = (drgrpo.load_model(path, "cpu")[0].state_dict() for path in final)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = (torch.load(os.path.join(path, drgrpo.STATE), weights_only=True) for path in final)
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for i, s in a["optimizer"]["state"].items():
        assert all(torch.equal(t, b["optimizer"]["state"][i][k]) for k, t in s.items())
    assert (a["rng"], a["order"], a["cursor"]) == (b["rng"], b["order"], b["cursor"])


def test_killed_mid_step_resumes_to_exactly_the_unbroken_run(reference, tmp_path, capsys):
    cfg = replace(reference, out_dir=str(tmp_path / "run"))
    ckpt2 = os.path.join(cfg.out_dir, "checkpoint-2")
    proc = launch(cfg, tmp_path / "first.log")
    # renamed into place: step 2 is done and saved, step 3 begins
    wait_until(lambda: os.path.isdir(ckpt2), proc)
    step_s = metrics(cfg)[1]["step_s"]
    time.sleep(step_s / 4)  # into step 3's sampling/update, well before it ends
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    assert n_lines(cfg) == 2 and drgrpo.checkpoints(cfg.out_dir) == [(2, ckpt2)], (
        "the kill missed step 3"
    )
    # resume, and kill again in step 4: step 3's metrics line is on disk, but its
    # weights are lost with the process
    proc = launch(cfg, tmp_path / "second.log")
    wait_until(lambda: n_lines(cfg) == 3, proc)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    assert f"resuming from {ckpt2} (step 2)" in (tmp_path / "second.log").read_text()
    assert drgrpo.checkpoints(cfg.out_dir) == [(2, ckpt2)], "the kill missed step 4"
    # and what a crash in the middle of writing leaves: half a metrics
    # line, a half-written checkpoint
    with open(os.path.join(cfg.out_dir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 4, "rew')
    with open(os.path.join(cfg.out_dir, "rollouts.jsonl"), "a") as f:
        f.write('{"step": 4, "prob')
    os.makedirs(os.path.join(cfg.out_dir, "checkpoint-4.tmp"))
    open(os.path.join(cfg.out_dir, "checkpoint-4.tmp", drgrpo.STATE), "w").write("cut short")
    before = signal.getsignal(signal.SIGINT)
    train(cfg)
    assert f"resuming from {ckpt2} (step 2)" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is before  # train put Ctrl-C back as it was
    files = ["checkpoint-2", "checkpoint-4", "config.toml", "metrics.jsonl", "rollouts.jsonl"]
    assert sorted(os.listdir(cfg.out_dir)) == files
    assert_same_run(cfg, reference)
    # a finished run says so and changes nothing
    assert train(cfg) == os.path.join(cfg.out_dir, "checkpoint-4")
    assert "this run is complete (step 4 of --steps 4)" in capsys.readouterr().out
    assert len(metrics(cfg)) == 4


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_finishes_the_step_saves_exits_and_resumes(
    reference, tmp_path, capsys, sig, code
):
    # Ctrl-C, or SIGTERM (a cluster's preemption, `timeout`, `kill`): the same; and
    # the grading workers say nothing
    cfg = replace(reference, out_dir=str(tmp_path / "run"))
    proc = launch(cfg, tmp_path / "run.log")
    wait_until(lambda: n_lines(cfg) >= 1, proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=300) == code
    time.sleep(1)  # the workers' last words, if any, reach the log
    log = (tmp_path / "run.log").read_text()
    said = re.search(
        r"drgrpo: interrupted at step (\d+); checkpoint saved in (\S+); "
        r"run the same command to resume",
        log,
    )
    assert said and "Traceback" not in log and "EOFError" not in log, log
    step, ckpt = int(said[1]), said[2]
    # it stopped after a whole step, not at the end
    assert 1 <= step < cfg.steps and n_lines(cfg) == step
    assert drgrpo.checkpoints(cfg.out_dir)[-1] == (step, ckpt)
    train(cfg)  # "the same command"
    assert f"resuming from {ckpt} (step {step})" in capsys.readouterr().out
    assert_same_run(cfg, reference)


@pytest.fixture
def ctrl_c_heard():
    """Python's own Ctrl-C handler, even where pytest runs with SIGINT ignored (a
    background job); put back after."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_second_ctrl_c_aborts_mid_step_and_keeps_the_last_checkpoint(
    reference, tmp_path, monkeypatch, capfd, ctrl_c_heard
):
    cfg = replace(reference, out_dir=str(tmp_path / "run"))
    real = drgrpo.HFSampler.generate

    def generate(self, prompts, n, *args, seed, **kw):
        if seed == cfg.seed * 100003 + 3:  # step 3: Ctrl-C twice
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, prompts, n, *args, seed=seed, **kw)

    monkeypatch.setattr(drgrpo.HFSampler, "generate", generate)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    assert "Ctrl-C again to abort now" in capfd.readouterr().err
    assert (
        drgrpo.checkpoints(cfg.out_dir) == [(2, os.path.join(cfg.out_dir, "checkpoint-2"))]
        and n_lines(cfg) == 2
    )
    monkeypatch.undo()
    train(cfg)
    assert_same_run(cfg, reference)


def test_resume_flag_never_auto_and_path(tiny, reference, tmp_path, capsys):
    demo = load_script("data/arith/demo.py")  # `make demo` again trains again
    assert drgrpo.parse_args(["train"])[1].resume == "auto" and "--resume never" in " ".join(
        demo.TRAIN
    )
    cfg = replace(
        reference, out_dir=str(tmp_path / "run"), steps=3, save_every=1, keep_checkpoints=0
    )
    train(cfg)
    assert [s for s, _ in drgrpo.checkpoints(cfg.out_dir)] == [1, 2, 3]  # keep 0: all of them
    # a path: go on from step 1; the later checkpoints go, steps 2 and 3 are re-done
    train(
        replace(cfg, resume=os.path.join(cfg.out_dir, "checkpoint-1"), steps=4, keep_checkpoints=2)
    )
    assert f"resuming from {cfg.out_dir}/checkpoint-1 (step 1)" in capsys.readouterr().out
    # the newest 2, the final one among them
    assert [s for s, _ in drgrpo.checkpoints(cfg.out_dir)] == [3, 4]
    assert_same_run(replace(cfg, steps=4), reference)
    # start over: the old run's checkpoints and metrics go
    train(replace(cfg, resume="never", steps=1))
    assert [s for s, _ in drgrpo.checkpoints(cfg.out_dir)] == [1] and len(metrics(cfg)) == 1
    with pytest.raises(
        drgrpo.UserError, match="--resume .*nothing-here: not a checkpoint of this trainer"
    ):
        train(replace(cfg, resume=str(tmp_path / "nothing-here")))


def digest(path):
    return {
        name: hashlib.sha256(open(os.path.join(path, name), "rb").read()).hexdigest()
        for name in os.listdir(path)
    }


@pytest.mark.parametrize(
    "error, why",
    [  # as a full disk surfaces: from the OS, or from torch.save's zip writer
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
        (
            RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos"),
            "RuntimeError",
        ),
    ],
)
def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(
    tiny, tmp_path, monkeypatch, error, why
):
    cfg = tiny_cfg(tiny, steps=3, save_every=1, out_dir=str(tmp_path / "run"))
    ckpt2, before = os.path.join(cfg.out_dir, "checkpoint-2"), {}
    real = torch.save

    def disk_full(obj, path, *args, **kw):
        if "checkpoint-3" in str(path):
            before.update(digest(ckpt2))
            open(path, "wb").write(b"the first bytes")
            raise error
        return real(obj, path, *args, **kw)

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(drgrpo.TrainingStopped) as stop:
        train(cfg)
    # one line: what was not saved, why, what it needs, what is free, and that nothing is lost
    need = drgrpo.checkpoint_gb(drgrpo.load_model(tiny["model"], "cpu")[0])
    said = re.fullmatch(
        rf"stopped: {cfg.out_dir}/checkpoint-3 could not be written \({why}; it "
        rf"needs ~{need:.2f} GB, [\d.]+ GB are free\); the earlier checkpoints are intact",
        str(stop.value),
    )
    assert said and stop.value.code == 74, str(stop.value)
    # no .tmp left
    files = ["checkpoint-1", "checkpoint-2", "config.toml", "metrics.jsonl", "rollouts.jsonl"]
    assert sorted(os.listdir(cfg.out_dir)) == files
    assert before and digest(ckpt2) == before
    monkeypatch.undo()
    train(cfg)  # the disk has room again: go on from step 2
    assert [m["step"] for m in metrics(cfg)] == [1, 2, 3]
    # --keep_checkpoints 2 (default)
    assert [s for s, _ in drgrpo.checkpoints(cfg.out_dir)] == [2, 3]


@pytest.mark.parametrize("adv_norm", drgrpo.ADV_NORMS)
@pytest.mark.parametrize("rewards", ["all right", "right iff gold is 1"])
def test_a_rollout_of_only_all_equal_groups_is_a_zero_update_never_nan(
    tiny, tmp_path, monkeypatch, adv_norm, rewards
):
    # every group all-equal: "all right" makes the batch's std 0 too;
    # "right iff gold is 1" leaves it > 0
    monkeypatch.setattr(
        drgrpo,
        "grade_groups",
        lambda cfg, rows, groups: (
            [
                [1.0 if rewards == "all right" or r["golds"] == ["1"] else 0.0 for _ in g]
                for r, g in zip(rows, groups, strict=True)
            ],
            0,
        ),
    )
    cfg = tiny_cfg(tiny, adv_norm=adv_norm, steps=2, out_dir=str(tmp_path / "run"))
    start = drgrpo.load_model(tiny["model"], "cpu")[0].state_dict()
    train(cfg)
    for m in metrics(cfg):
        assert m["zero_std_group_frac"] == 1.0 and (m["reward"] == 1.0) == (rewards == "all right")
        # a finite zero, not a NaN
        assert (m["loss"], m["grad_norm"], m["skipped_updates"]) == (0.0, 0.0, 0.0)
    saved = drgrpo.load_model(f"{cfg.out_dir}/checkpoint-2", "cpu")[0].state_dict()
    # nothing to learn: Adam moved nothing
    assert all(torch.equal(v, start[k]) for k, v in saved.items())


def test_resume_takes_lr_from_the_flags_not_the_checkpoint(tiny, tmp_path, monkeypatch):
    cfg = tiny_cfg(tiny, steps=1, out_dir=str(tmp_path / "run"))
    train(cfg)
    seen, real = [], drgrpo.optimizer_step
    monkeypatch.setattr(
        drgrpo,
        "optimizer_step",
        lambda m, opt, *a, **kw: seen.append(opt.param_groups[0]["lr"]) or real(m, opt, *a, **kw),
    )
    train(replace(cfg, steps=2, lr=1e-4))  # e.g. a lower lr after a run stopped on NaN
    assert seen == [1e-4, 1e-4] and cfg.lr != 1e-4


def test_an_ignored_ctrl_c_stays_ignored(tiny, tmp_path, monkeypatch):
    seen, real = [], drgrpo.HFSampler.generate
    monkeypatch.setattr(
        drgrpo.HFSampler,
        "generate",
        lambda *a, **kw: seen.append(signal.getsignal(signal.SIGINT)) or real(*a, **kw),
    )
    # as in a script's `cmd &` job, or under nohup
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        train(tiny_cfg(tiny, steps=1, out_dir=str(tmp_path / "run")))
        assert seen == [signal.SIG_IGN] and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_checkpoint_files_and_directories_reach_the_disk_before_the_rename(
    tiny, tmp_path, monkeypatch
):
    # a test cannot cut the power; it can check the order: every file and the tmp dir fsynced, then
    # the rename, then the parent directory (which holds the rename) fsynced
    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(
        os,
        "fsync",
        lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd),
    )
    monkeypatch.setattr(
        os, "replace", lambda a, b: events.append(("replace", str(b))) or real_replace(a, b)
    )
    model, tokenizer = drgrpo.load_model(tiny["model"], "cpu")
    path = drgrpo.save_checkpoint(model, tokenizer, str(tmp_path / "checkpoint-1"), {"step": 1})
    rename = events.index(("replace", path))
    synced_before = {p for kind, p in events[:rename] if kind == "fsync"}
    assert {os.path.join(path + ".tmp", f) for f in os.listdir(path)} | {
        path + ".tmp"
    } <= synced_before
    assert ("fsync", str(tmp_path)) in events[rename:]
