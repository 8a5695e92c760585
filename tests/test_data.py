"""Data loading errors, CLI errors, and the demo's generated data."""

import contextlib
import filecmp
import io
import json
import os
import subprocess
import sys

import pytest
from conftest import arith

import drgrpo
from drgrpo import UserError, load_jsonl


def write(tmp_path, text, name="d.jsonl"):
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


# `python drgrpo.py train ...` or `python drgrpo.py eval ...`
def cli(mode, *args):
    command = ["drgrpo.py", mode]
    r = subprocess.run(
        [sys.executable, *command, *args], capture_output=True, text=True, timeout=120
    )
    return r, [line for line in r.stderr.splitlines() if line.startswith("drgrpo: error:")]


def test_good_file_blank_answers_skipped_and_extra_golds(tmp_path, capsys):
    p = write(
        tmp_path,
        '{"problem": "a", "answer": "1"}\n\n{"problem": "b", "answer": " "}\n'
        '{"problem": "c", "answer": "2", "answers": ["2", "2.0"]}\n',
    )
    rows = load_jsonl(p)
    assert rows == [{"problem": "a", "golds": ["1"]}, {"problem": "c", "golds": ["2", "2.0"]}]
    assert "skipped 1 rows with a blank answer" in capsys.readouterr().out


def test_repeated_problems_are_skipped_and_counted(tmp_path, capsys):
    p = write(
        tmp_path,
        '{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": "2"}\n'
        '{"problem": " a\\n", "answer": "3"}\n{"problem": "a", "answer": "1"}\n'
        '{"problem": "A", "answer": 4}\n',
    )
    # the first is kept; text differing in case is new
    assert load_jsonl(p) == [
        {"problem": "a", "golds": ["1"]},
        {"problem": "b", "golds": ["2"]},
        {"problem": "A", "golds": ["4"]},
    ]
    assert (
        "skipped 0 rows with a blank answer and 2 repeats of an earlier problem"
        in capsys.readouterr().out
    )
    load_jsonl(p, quiet=True)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "text,message",
    [
        (
            '{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": \n',
            "d.jsonl:2: invalid JSON",
        ),
        ('{"problem": "a"}\n', "d.jsonl:1: missing field 'answer'"),
        ('{"answer": "1"}\n', "d.jsonl:1: missing field 'problem'"),
        ('{"problem": 3, "answer": "1"}\n', "d.jsonl:1: field 'problem' must be a string"),
        ("[1, 2]\n", "d.jsonl:1: expected a JSON object"),
        ("", "no usable rows"),
        (
            '{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": {"x": 1}}\n',
            "d.jsonl:2: an answer must be a",
        ),
        (
            '{"problem": "a", "answer": ["1"]}\n',
            "d.jsonl:1: an answer must be a string or a number",
        ),
        ('{"problem": "a", "answer": true}\n', "d.jsonl:1: an answer must be a string or a number"),
        (
            '{"problem": "a", "answer": "1", "answers": [{"x": 1}]}\n',
            "d.jsonl:1: an answer must be",
        ),
        (
            '{"problem": "a", "answer": "1", "answers": "2"}\n',
            "d.jsonl:1: field 'answers' must be a list",
        ),
        ('{"problem": "a", "answer": " "}\n{"problem": "b", "answer": null}\n', "no usable rows"),
        (
            b'{"problem": "a", "answer": "1"}\n{"problem": "b\xff", "answer": "1"}\n',
            "d.jsonl:2: invalid JSON .*utf-8",
        ),
    ],
)
def test_bad_files_name_the_line(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        load_jsonl(write(tmp_path, text))


def test_numbers_are_accepted_as_answers(tmp_path):
    assert load_jsonl(write(tmp_path, '{"problem": "a", "answer": 142, "answers": [142.0]}\n')) == [
        {"problem": "a", "golds": ["142", "142.0"]}
    ]


def test_a_bom_crlf_line_ends_numbers_and_blank_lines_are_accepted(tmp_path, capsys):
    """What editors and spreadsheets write: a UTF-8 BOM, CRLF line ends, a number as the answer,
    extra fields, a trailing blank line. Blank answers and repeats are skipped, and counted."""
    text = b"\xef\xbb\xbf" + (
        b'{"problem": "a", "answer": 3, "source": "mine"}\r\n'
        b'{"problem": "b", "answer": "4", "answers": ["four", 4.0]}\r\n'
        b'{"problem": "a", "answer": "5"}\r\n{"problem": "c", "answer": " "}\r\n\r\n'
    )
    rows = load_jsonl(write(tmp_path, text))
    assert rows == [
        {"problem": "a", "golds": ["3"]},
        {"problem": "b", "golds": ["4", "four", "4.0"]},
    ]
    assert "skipped 1 rows with a blank answer and 1 repeats of an earlier problem" in (
        capsys.readouterr().out
    )


def test_missing_file():
    with pytest.raises(UserError, match="no/such.jsonl: no such file"):
        load_jsonl("no/such.jsonl")


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--template", "chatml"], "--template 'chatml'"),
        (["--group_size", "1"], "--group_size 1"),
        (["--algo", "ppo"], "--algo 'ppo'"),
        (["--train_batch_size", "100"], "does not divide a rollout"),
        (["--grade_timeout", "0"], "--grade_timeout 0.0: must be in (0, inf)"),
        (["--grade_workers", "0"], "--grade_workers 0: must be in [1, inf)"),
        (["--train_data", "missing.jsonl"], "missing.jsonl: no such file"),
        (
            ["--train_data", "data/arith/train.jsonl", "--out_dir", "README.md/run"],
            "--out_dir README.md/run: not writable",
        ),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(flags, message):
    r, lines = cli("train", *flags)
    assert r.returncode == 2 and len(lines) == 1 and message in lines[0]


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--loss_norm_const", "-32"], "--loss_norm_const -32: must be in [0, inf)"),
        (["--epochs_per_rollout", "0"], "--epochs_per_rollout 0: must be in [1, inf)"),
        (["--prompts_per_rollout", "0"], "--prompts_per_rollout 0: must be in [1, inf)"),
        (["--temperature", "0"], "--temperature 0.0: must be in (0, inf)"),  # greedy, G = 8
        (["--temperature", "-1"], "--temperature -1.0: must be in (0, inf)"),
        (["--clip_eps_low", "1.5"], "--clip_eps_low 1.5: must be in [0, 1)"),
        (["--clip_eps_low", "1"], "--clip_eps_low 1.0: must be in [0, 1)"),
        (["--clip_eps_high", "-0.1"], "--clip_eps_high -0.1: must be in [0, inf)"),
        (["--top_p", "0"], "--top_p 0.0: must be in (0, 1]"),
        (["--top_p", "1.01"], "--top_p 1.01: must be in (0, 1]"),
        (["--lr=-1e-6"], "--lr -1e-06: must be in [0, inf)"),
        (["--kl_beta", "-0.1"], "--kl_beta -0.1: must be in [0, inf)"),
        (["--keep_checkpoints", "-1"], "--keep_checkpoints -1: must be in [0, inf)"),
        (["--eval_every", "-1"], "--eval_every -1: must be in [0, inf)"),
        (["--log_rollouts", "-2"], "--log_rollouts -2: must be in [-1, inf)"),
        (["--vllm_gpu_memory", "1.5"], "--vllm_gpu_memory 1.5: must be in (0, 1]"),
        (["--grad_clip", "0"], "--grad_clip 0.0: must be in (0, inf)"),
        (["--steps", "0"], "--steps 0: must be in [1, inf)"),
    ],
)
def test_every_number_is_checked_at_start_up(flags, message, capsys):
    """Signs and ranges, each refused in one line with exit code 2 before anything loads. Each of
    these used to be accepted: C < 0 trained backwards (reward 0.30 -> 0.08 in 12 steps), 0 epochs
    crashed after the first rollout, temperature 0 crashed after the model loaded."""
    with pytest.raises(SystemExit) as stop:
        drgrpo.main(["train", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and err == [f"drgrpo: error: {message}"]


@pytest.mark.parametrize("flag", ["--eval_n", "--n"])
def test_train_does_not_offer_eval_only_flags(flag, capsys):
    """--eval_n sets evaluation's samples per problem; training's own evaluation is greedy, so
    train refuses it (argparse: exit 2) and its --help does not list it. eval still takes it."""
    with pytest.raises(SystemExit) as stop:
        drgrpo.main(["train", flag, "4"])
    assert stop.value.code == 2 and f"unrecognized arguments: {flag} 4" in capsys.readouterr().err
    assert "--eval_n" not in drgrpo_help("train") and "--eval_n" in drgrpo_help("eval")
    assert drgrpo.parse_args(["eval", flag, "4"])[1].eval_n == 4


def drgrpo_help(mode):
    with pytest.raises(SystemExit), contextlib.redirect_stdout(io.StringIO()) as out:
        drgrpo.parse_args([mode, "--help"])
    return out.getvalue()


@pytest.mark.parametrize(
    "mode,text,message",
    [
        ("train", "", "d.jsonl: no usable rows"),
        (
            "train",
            '{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": \n',
            "d.jsonl:2: invalid JSON",
        ),
        ("train", '{"answer": "1"}\n', "d.jsonl:1: missing field 'problem'"),
        (
            "train",
            '{"problem": ["a"], "answer": "1"}\n',
            "d.jsonl:1: field 'problem' must be a string",
        ),
        (
            "train",
            '{"problem": "a", "answer": {"x": 1}}\n',
            "d.jsonl:1: an answer must be a string or a number",
        ),
        ("eval", '{"problem": "a"}\n', "d.jsonl:1: missing field 'answer'"),
        (
            "eval",
            b'{"problem": "\xc3", "answer": "1"}\n',
            "d.jsonl:1: invalid JSON ('utf-8' codec can't decode",
        ),
    ],
)
def test_bad_data_through_the_cli_is_one_line_and_exit_2(tmp_path, mode, text, message):
    r, lines = cli(
        mode, f"--{mode}_data", write(tmp_path, text), "--out_dir", str(tmp_path / "run")
    )
    assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr


def test_cli_says_what_it_skipped_before_anything_slow(tmp_path):
    p = write(
        tmp_path,
        '{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": ""}\n'
        '{"problem": "a ", "answer": "1"}\n',
    )
    # stops at the unwritable out_dir
    r, lines = cli("train", "--train_data", p, "--out_dir", "README.md/run")
    assert r.returncode == 2 and len(lines) == 1 and "--out_dir README.md/run" in lines[0]
    assert (
        f"{p}: skipped 1 rows with a blank answer and 1 repeats of an earlier problem" in r.stdout
    )


def test_demo_data_is_reproducible_and_test_set_is_held_out(tmp_path):
    arith.make_data(root=str(tmp_path))
    paths = {split: f"data/arith/{split}.jsonl" for split in arith.SPLITS}
    for split, path in paths.items():
        assert filecmp.cmp(path, tmp_path / f"{split}.jsonl", shallow=False), (
            f"{path} differs from make_data()"
        )
        assert sum(1 for _ in open(path)) == arith.SPLITS[split]
    problems = {
        split: {json.loads(line)["problem"] for line in open(path)} for split, path in paths.items()
    }
    assert not problems["test"] & (problems["train"] | problems["pretrain"])


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_model_that_is_neither_here_nor_on_the_hub_is_one_line_and_exit_2(tmp_path, mode):
    # HF_HOME in tmp_path: the hub client's cache; afterwards it must hold no
    # model file (nothing downloaded)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf")}
    command = ["drgrpo.py", mode]
    r = subprocess.run(
        [
            sys.executable,
            *command,
            "--model",
            "nonexist/model",
            "--train_data",
            "data/arith/train.jsonl",
            "--eval_data",
            "data/arith/test.jsonl",
            "--out_dir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert (
        lines[0].startswith("drgrpo: error: --model nonexist/model: not a local directory")
        and "point --model at a local copy" in lines[0]
    )
    assert not [
        p
        for p in (tmp_path / "hf").rglob("*")
        if p.is_file() and p.suffix in (".json", ".safetensors")
    ]


def test_missing_paper_data_says_make_data_fetches_it(tmp_path):
    r, lines = cli("train", "--train_data", str(tmp_path / "data" / "train_math_lvl3to5.jsonl"))
    assert (
        r.returncode == 2
        and len(lines) == 1
        and "no such file (`make data` downloads it)" in lines[0]
    )


def test_modes_train_eval_plot_and_train_without_a_mode():
    """`python drgrpo.py [train|eval] --flag ...` gives a Config; `plot DIR ...` the run dirs."""
    assert drgrpo.parse_args(["--steps", "3"]) == ("train", drgrpo.Config(steps=3))
    assert drgrpo.parse_args(["eval", "--n", "4"]) == ("eval", drgrpo.Config(eval_n=4))
    assert drgrpo.parse_args(["train", "--fused_head", "false"])[1].fused_head is False
    assert drgrpo.parse_args(["plot", "runs/a", "runs/b"]) == ("plot", ["runs/a", "runs/b"])
    with pytest.raises(SystemExit):
        drgrpo.parse_args(["plot"])  # plot needs a run directory
