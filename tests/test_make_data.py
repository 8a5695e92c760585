"""`make data`: conversion of each source's format, the recorded checksums, the held-out
validation split, and failure without a network."""

import hashlib
import json
import os
import urllib.error

import pytest
from conftest import load_script

import drgrpo
from drgrpo import UserError

math_data = load_script("data/math/prepare.py")  # `make data`
PAPER_DATA, check_converted, convert_rows, split_valid, join_valid = (
    math_data.PAPER_DATA,
    math_data.check_converted,
    math_data.convert_rows,
    math_data.split_valid,
    math_data.join_valid,
)

SHARED = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data"
)
TRAIN, VALID = "train_math_lvl3to5.jsonl", "valid_math_lvl3to5.jsonl"
# sha256 of the validation file `make data` writes by default: the same 500 problems on every run,
# Python version and machine (random.Random(0).sample is what picks them)
VALID_SHA = "286323913ad5b90d10a2af230637ebfa60a68046d261e1d7415be11e6c4fd9bf"


def jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


def in_order(part, whole):
    """Is `part` a subsequence of `whole`: its rows, in whole's order?"""
    rest = iter(whole)
    return all(row in rest for row in part)


def test_conversion_of_each_source_format():
    limr = [{"id": "x", "prompt": "Find $x$.", "answer": "\\frac{1}{4}", "source": "math"}]
    assert convert_rows(limr, "math_lvl3to5_8k") == [
        {"problem": "Find $x$.", "answer": "\\frac{1}{4}", "source": "math_lvl3to5_8k"}
    ]
    amc = [{"problem": "p", "answer": 142.0, "difficulty": 1.0}, {"problem": "q", "answer": 2.5}]
    assert [r["answer"] for r in convert_rows(amc, "amc")] == ["142", "2.5"]
    minerva = [{"problem": "m", "answer": ["9.6\n", "9.60"]}]
    assert convert_rows(minerva, "minerva") == [
        {"problem": "m", "answer": "9.6\n", "source": "minerva", "answers": ["9.6\n", "9.60"]}
    ]
    assert convert_rows([{"problem": "o", "answer": ["$x=1$"]}], "olympiadbench")[0]["answers"] == [
        "$x=1$"
    ]


def test_split_valid_holds_out_n_rows_in_order_by_seed():
    rows = [{"problem": f"p{i}", "answer": str(i)} for i in range(20)]
    train, valid = split_valid(rows, 5)
    assert (len(train), len(valid)) == (15, 5)
    assert not {r["problem"] for r in train} & {r["problem"] for r in valid}
    assert sorted(train + valid, key=rows.index) == rows  # together, every row once
    assert in_order(train, rows) and in_order(valid, rows)
    assert split_valid(rows, 5) == (train, valid)  # the same rows on every call
    assert split_valid(rows, 5, seed=1)[1] != valid
    assert split_valid(rows, 0) == (rows, [])  # --valid 0: all of them to train
    assert join_valid(train, valid) == rows  # how `make data` recognises a split it wrote


def test_split_valid_never_holds_out_a_repeat_or_a_blank_answer():
    # held out, one copy of a repeated problem would leave the other in the training file; a blank
    # answer is skipped by load_jsonl and could not be graded
    rows = [{"problem": p, "answer": "1"} for p in ["a", "b", " a", "c", "d"]]
    rows.append({"problem": "e", "answer": " "})
    train, valid = split_valid(rows, 3)  # as many as there are: b, c, d
    assert [r["problem"] for r in valid] == ["b", "c", "d"]
    assert [r["problem"] for r in train] == ["a", " a", "e"]
    with pytest.raises(UserError, match="cannot hold out 4 rows: 3 have a distinct problem"):
        split_valid(rows, 4)


@pytest.mark.skipif(not os.path.isdir(SHARED), reason=f"the real data is not at {SHARED}")
@pytest.mark.parametrize("name", list(PAPER_DATA))
def test_recorded_checksums_match_the_real_data(name):
    # ../shared/data holds the same sets, converted from the same sources (plus
    # extra fields): reduced to what convert_rows writes, each must pass the check
    # `make data` applies to a download.
    source = PAPER_DATA[name][1]
    rows = [json.loads(line) for line in open(os.path.join(SHARED, name))]
    raw = [{"problem": r["problem"], "answer": r.get("answers", r["answer"])} for r in rows]
    text = "".join(json.dumps(r) + "\n" for r in convert_rows(raw, source))
    check_converted(name, text)
    with pytest.raises(UserError, match=f"data/{name}: .* the source has changed"):
        check_converted(name, text.replace("\n", " \n", 1))  # one changed byte


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(SHARED, TRAIN)), reason=f"the real data is not at {SHARED}"
)
def test_valid_split_of_the_real_training_set(tmp_path, monkeypatch, capsys):
    # the training set as `make data` converts it, already in data/: the split is made from it
    # with no download
    rows = [json.loads(line) for line in open(os.path.join(SHARED, TRAIN))]
    raw = [{"problem": r["problem"], "answer": r["answer"]} for r in rows]  # less extra fields
    rows = convert_rows(raw, PAPER_DATA[TRAIN][1])
    full = jsonl(rows)
    check_converted(TRAIN, full)
    root = tmp_path / "data"
    root.mkdir()
    (root / TRAIN).write_text(full)
    monkeypatch.setattr(math_data, "PAPER_DATA", {TRAIN: PAPER_DATA[TRAIN]})

    def no_network(url, timeout=None):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    math_data.download_data(root=str(root))  # --valid's default, 500
    train_text, valid_text = (root / TRAIN).read_text(), (root / VALID).read_text()
    train, valid = ([json.loads(line) for line in t.splitlines()] for t in (train_text, valid_text))
    assert (len(train), len(valid)) == (8023, 500)
    assert hashlib.sha256(valid_text.encode()).hexdigest() == VALID_SHA
    held = {r["problem"].strip() for r in valid}
    assert len(held) == 500 and not held & {r["problem"].strip() for r in train}
    assert in_order(train, rows) and in_order(valid, rows)
    assert sorted(train_text.splitlines() + valid_text.splitlines()) == sorted(full.splitlines())
    # as drgrpo reads them: the training file keeps the set's 2 blank answers and 1 repeat, which
    # load_jsonl skips
    loaded_train = drgrpo.load_jsonl(str(root / TRAIN), quiet=True)
    loaded_valid = drgrpo.load_jsonl(str(root / VALID), quiet=True)
    assert (len(loaded_train), len(loaded_valid)) == (8020, 500)
    assert not {r["problem"] for r in loaded_train} & {r["problem"] for r in loaded_valid}

    # a second run finds the split good (it joins back to the recorded checksum) and changes nothing
    capsys.readouterr()
    math_data.download_data(root=str(root))
    assert capsys.readouterr().out == f"data/{TRAIN}: present, checksum ok\n"
    assert (root / TRAIN).read_text() == train_text and (root / VALID).read_text() == valid_text

    # --valid 0: the paper's whole training set again, and no stale validation file beside it
    math_data.download_data(root=str(root), valid=0)
    assert (root / TRAIN).read_text() == full and not (root / VALID).exists()


def test_offline_gives_one_clear_error_and_writes_nothing(tmp_path, monkeypatch):
    def no_network(url, timeout=None):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    with pytest.raises(UserError, match="cannot download .*make data` needs internet access"):
        math_data.download_data(root=str(tmp_path))
    assert not list(tmp_path.rglob("*.jsonl*"))


def test_download_converts_checks_splits_and_skips_good_files(tmp_path, monkeypatch):
    rows = [
        {"id": str(i), "prompt": f"problem {i}", "answer": str(i), "source": "math"}
        for i in range(5)
    ]
    source = tmp_path / "math.8k.json"
    source.write_text(json.dumps(rows))
    converted = convert_rows(rows, "math_lvl3to5_8k")
    text = jsonl(converted)
    monkeypatch.setattr(
        math_data,
        "PAPER_DATA",
        {
            TRAIN: (
                source.as_uri(),
                "math_lvl3to5_8k",
                5,
                hashlib.sha256(text.encode()).hexdigest(),
            )
        },
    )
    out = tmp_path / "data"
    with pytest.raises(UserError, match="cannot hold out 500 rows: 5 have"):
        math_data.download_data(root=str(out))  # the default is for the real set
    math_data.download_data(root=str(out), valid=2)
    train, valid = split_valid(converted, 2)
    assert (out / TRAIN).read_text() == jsonl(train) and (out / VALID).read_text() == jsonl(valid)
    assert len(train) == 3 and drgrpo.load_jsonl(str(out / TRAIN))[2] == {
        "problem": train[2]["problem"],
        "golds": [train[2]["answer"]],
    }
    assert [r["problem"] for r in drgrpo.load_jsonl(str(out / VALID))] == [
        r["problem"] for r in valid
    ]
    (out / VALID).write_text(jsonl([{**valid[0], "problem": "another"}, valid[1]]))
    math_data.download_data(root=str(out), valid=2)  # is not taken as good: downloaded afresh
    assert (out / VALID).read_text() == jsonl(valid)
    source.unlink()  # later runs find the good files and download nothing
    math_data.download_data(root=str(out), valid=2)
    math_data.download_data(root=str(out), valid=1)  # a new size is split from the files present
    assert len((out / VALID).read_text().splitlines()) == 1
    math_data.download_data(root=str(out), valid=0)
    assert (out / TRAIN).read_text() == text and not (out / VALID).exists()
    math_data.download_data(root=str(out), valid=0)


def test_download_of_a_changed_source_writes_nothing(tmp_path, monkeypatch):
    # the checksum is of the whole converted file, checked before it is split
    source = tmp_path / "math.8k.json"
    source.write_text(json.dumps([{"prompt": f"p{i}", "answer": "1"} for i in range(3)]))
    monkeypatch.setattr(
        math_data, "PAPER_DATA", {TRAIN: (source.as_uri(), "math_lvl3to5_8k", 3, "0" * 64)}
    )
    with pytest.raises(UserError, match=f"data/{TRAIN}: 3 rows, .* the source has changed"):
        math_data.download_data(root=str(tmp_path / "data"), valid=1)
    assert not (tmp_path / "data").exists()


def test_download_reads_hf_arrow_files(tmp_path, monkeypatch):
    import pyarrow as pa

    # as the minerva source stores it
    table = pa.table({"problem": ["a", "b"], "answer": [["1", "1.0"], ["2"]]})
    sink = pa.BufferOutputStream()
    # HF datasets' save_to_disk writes an IPC stream
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    source = tmp_path / "data-00000-of-00001.arrow"
    source.write_bytes(sink.getvalue().to_pybytes())
    text = "".join(json.dumps(r) + "\n" for r in convert_rows(table.to_pylist(), "minerva"))
    monkeypatch.setattr(
        math_data,
        "PAPER_DATA",
        {
            "eval/minerva.jsonl": (
                source.as_uri(),
                "minerva",
                2,
                hashlib.sha256(text.encode()).hexdigest(),
            )
        },
    )
    math_data.download_data(root=str(tmp_path / "data"))
    assert drgrpo.load_jsonl(str(tmp_path / "data" / "eval" / "minerva.jsonl"))[0]["golds"] == [
        "1",
        "1.0",
    ]
