"""Faults in the middle of a run, reproduced as they happen: a checkpoint file cut short, a full
disk at start-up, a damaged log line. Each ends in one line, or in a fall-back that loses nothing
that was saved before the fault. (A write that fails for lack of space: tests/test_resume.py.)"""

import json
import os
from dataclasses import replace

import pytest
from test_e2e import tiny_cfg

import drgrpo

TIMING = {"sample_s", "reward_s", "update_s", "sync_s", "step_s", "tokens_per_s"}


def untimed(cfg):
    lines = [json.loads(x) for x in open(os.path.join(cfg.out_dir, "metrics.jsonl"))]
    return [{k: v for k, v in m.items() if k not in TIMING} for m in lines]


def cut_in_half(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


@pytest.fixture(scope="module")
def unbroken(tiny, tmp_path_factory):
    """Three steps, a checkpoint after each: what every run below must end up as."""
    cfg = tiny_cfg(tiny, steps=3, save_every=1, out_dir=str(tmp_path_factory.mktemp("unbroken")))
    drgrpo.train(cfg)
    return cfg


@pytest.mark.parametrize("damaged", ["model.safetensors", drgrpo.STATE])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(
    unbroken, tmp_path, capsys, damaged
):
    cfg = replace(unbroken, out_dir=str(tmp_path / "run"), steps=2)
    drgrpo.train(cfg)
    newest = os.path.join(cfg.out_dir, "checkpoint-2")
    cut_in_half(os.path.join(newest, damaged))  # a failing disk, or a copy gone wrong
    capsys.readouterr()
    drgrpo.train(replace(cfg, steps=3))  # the same command, a longer run
    out = capsys.readouterr().out
    assert f"{newest}: {damaged} is damaged (" in out
    assert "going back to the checkpoint before it" in out
    assert f"resuming from {cfg.out_dir}/checkpoint-1 (step 1)" in out
    assert untimed(replace(cfg, steps=3)) == untimed(unbroken)  # steps 2 and 3 done again


def test_no_intact_checkpoint_or_a_damaged_path_stops_with_one_line(unbroken, tmp_path, capsys):
    cfg = replace(unbroken, out_dir=str(tmp_path / "run"), steps=2)
    drgrpo.train(cfg)
    for step in (1, 2):
        cut_in_half(os.path.join(cfg.out_dir, f"checkpoint-{step}", "model.safetensors"))
    args = ["train", "--model", cfg.model, "--train_data", cfg.train_data, "--sampler", "hf"]
    args += ["--out_dir", cfg.out_dir, "--max_new_tokens", "16", "--steps", "3"]
    for resume, said in (
        ("auto", f"{cfg.out_dir}: no intact checkpoint; --resume never starts over"),
        (f"{cfg.out_dir}/checkpoint-1", "model.safetensors is damaged (SafetensorError)"),
    ):
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            drgrpo.main([*args, "--resume", resume])
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(err) == 1 and err[0].startswith("drgrpo: error: ")
        assert err[0].endswith(said), err
    # nothing was deleted: both are still there to inspect
    assert [s for s, _ in drgrpo.checkpoints(cfg.out_dir)] == [1, 2]


def test_a_damaged_log_line_is_dropped_and_counted(unbroken, tmp_path, capsys):
    cfg = replace(unbroken, out_dir=str(tmp_path / "run"), steps=2)
    drgrpo.train(cfg)
    for name in ("metrics.jsonl", "rollouts.jsonl"):
        path = os.path.join(cfg.out_dir, name)
        lines = open(path).readlines()
        lines.insert(1, "{this is not JSON\n")  # between step 1's lines and step 2's
        open(path, "w").writelines(lines)
    capsys.readouterr()
    drgrpo.train(replace(cfg, steps=3))
    out = capsys.readouterr().out
    for name in ("metrics.jsonl", "rollouts.jsonl"):
        assert f"{cfg.out_dir}/{name}: dropped 1 damaged lines" in out
    assert untimed(replace(cfg, steps=3)) == untimed(unbroken)
    rollouts = [json.loads(x) for x in open(os.path.join(cfg.out_dir, "rollouts.jsonl"))]
    unbroken_rollouts = [
        json.loads(x) for x in open(os.path.join(unbroken.out_dir, "rollouts.jsonl"))
    ]
    assert rollouts == unbroken_rollouts


def test_too_little_disk_for_the_checkpoints_is_said_at_start_up(
    unbroken, tmp_path, capsys, monkeypatch
):
    """One checkpoint of the tiny model is ~0.02 GB (16 MB for the tokenizer, 12 bytes a weight);
    a disk with 0.03 GB free fits one, not the three at once that --keep_checkpoints 2 needs."""
    cfg = replace(unbroken, out_dir=str(tmp_path / "run"), steps=1)
    real = drgrpo.shutil.disk_usage

    def small_disk(path):
        return real(path)._replace(free=30_000_000)

    monkeypatch.setattr(drgrpo.shutil, "disk_usage", small_disk)
    drgrpo.train(cfg)
    need = 3 * drgrpo.checkpoint_gb(drgrpo.load_model(cfg.model, "cpu")[0])
    warning = f"warning: {cfg.out_dir}: 0.03 GB free, 3 checkpoints: {need:.2f} GB"
    assert warning in capsys.readouterr().out
