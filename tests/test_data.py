"""Data loading errors, CLI errors, and the demo's generated data."""
import filecmp
import json
import subprocess
import sys

import pytest

from drgrpo import DEMO_DATA, UserError, load_jsonl, make_demo_data


def write(tmp_path, text, name="d.jsonl"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_good_file_blank_answers_skipped_and_extra_golds(tmp_path, capsys):
    p = write(tmp_path, '{"problem": "a", "answer": "1"}\n\n{"problem": "b", "answer": " "}\n'
                        '{"problem": "c", "answer": "2", "answers": ["2", "2.0"]}\n')
    rows = load_jsonl(p)
    assert rows == [{"problem": "a", "golds": ["1"]}, {"problem": "c", "golds": ["2", "2.0"]}]
    assert "skipped 1 rows with a blank answer" in capsys.readouterr().out


@pytest.mark.parametrize("text,message", [
    ('{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": \n', "d.jsonl:2: invalid JSON"),
    ('{"problem": "a"}\n', "d.jsonl:1: missing field 'answer'"),
    ('{"answer": "1"}\n', "d.jsonl:1: missing field 'problem'"),
    ('{"problem": 3, "answer": "1"}\n', "d.jsonl:1: field 'problem' must be a string"),
    ('[1, 2]\n', "d.jsonl:1: expected a JSON object"),
    ('', "no usable rows"),
])
def test_bad_files_name_the_line(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        load_jsonl(write(tmp_path, text))


def test_missing_file():
    with pytest.raises(UserError, match="no/such.jsonl: no such file"):
        load_jsonl("no/such.jsonl")


@pytest.mark.parametrize("flags,message", [
    (["--template", "chatml"], "--template 'chatml'"),
    (["--group_size", "1"], "--group_size 1"),
    (["--algo", "ppo"], "--algo 'ppo'"),
    (["--train_batch_size", "100"], "does not divide a rollout"),
    (["--train_data", "missing.jsonl"], "missing.jsonl: no such file"),
    (["--train_data", "data/arith_train.jsonl", "--out_dir", "README.md/run"], "--out_dir README.md/run: cannot write"),
])
def test_cli_errors_are_one_line_and_exit_2(flags, message):
    r = subprocess.run([sys.executable, "drgrpo.py", "train", *flags], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.startswith("drgrpo: error:")]
    assert len(lines) == 1 and message in lines[0]


def test_demo_data_is_reproducible_and_test_set_is_held_out(tmp_path):
    make_demo_data(root=str(tmp_path))
    for path, size in DEMO_DATA.values():
        assert filecmp.cmp(path, tmp_path / path, shallow=False), f"{path} differs from make_demo_data()"
        assert sum(1 for _ in open(path)) == size
    problems = {split: {json.loads(line)["problem"] for line in open(path)} for split, (path, _) in DEMO_DATA.items()}
    assert not problems["test"] & (problems["train"] | problems["pretrain"])
