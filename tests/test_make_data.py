"""`make data`: conversion of each source's format, the recorded checksums,
and failure without a network."""

import hashlib
import json
import os
import urllib.error

import pytest
from conftest import load_script

import drgrpo
from drgrpo import UserError

math_data = load_script("data/math/prepare.py")  # `make data`
PAPER_DATA, check_converted, convert_rows = (
    math_data.PAPER_DATA,
    math_data.check_converted,
    math_data.convert_rows,
)

SHARED = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data"
)


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


def test_offline_gives_one_clear_error_and_writes_nothing(tmp_path, monkeypatch):
    def no_network(url, timeout=None):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    with pytest.raises(UserError, match="cannot download .*make data` needs internet access"):
        math_data.download_data(root=str(tmp_path))
    assert not list(tmp_path.rglob("*.jsonl*"))


def test_download_converts_checks_and_skips_good_files(tmp_path, monkeypatch):
    rows = [
        {"id": str(i), "prompt": f"problem {i}", "answer": str(i), "source": "math"}
        for i in range(3)
    ]
    source = tmp_path / "math.8k.json"
    source.write_text(json.dumps(rows))
    text = "".join(json.dumps(r) + "\n" for r in convert_rows(rows, "math_lvl3to5_8k"))
    monkeypatch.setattr(
        math_data,
        "PAPER_DATA",
        {
            "train_math_lvl3to5.jsonl": (
                source.as_uri(),
                "math_lvl3to5_8k",
                3,
                hashlib.sha256(text.encode()).hexdigest(),
            )
        },
    )
    out = tmp_path / "data"
    math_data.download_data(root=str(out))
    assert (out / "train_math_lvl3to5.jsonl").read_text() == text
    assert drgrpo.load_jsonl(str(out / "train_math_lvl3to5.jsonl"))[2] == {
        "problem": "problem 2",
        "golds": ["2"],
    }
    source.unlink()  # a second run finds the good file and downloads nothing
    math_data.download_data(root=str(out))


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
