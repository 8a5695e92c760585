"""`make data`: the paper's public training and evaluation sets, downloaded, converted to drgrpo's
JSONL and checked. Writes data/train_math_lvl3to5.jsonl and
data/eval/{aime24,amc,math500,minerva,olympiadbench}.jsonl.

    python data/math/prepare.py
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the project root, for drgrpo.py
from drgrpo import UserError  # noqa: E402

DATA = os.path.dirname(HERE)  # data/: the files go where drgrpo.py's defaults look for them

# Sources, pinned to commits: the MATH level 3-5 training set (8,523 problems, as released with
# LIMR) and the reference repository's evaluation suite (HF `save_to_disk` Arrow files, read with
# pyarrow, which `make data` installs). The row counts and the SHA-256 of each converted file are
# checked, so a changed source is caught.
LIMR = (
    "https://raw.githubusercontent.com/GAIR-NLP/LIMR/98ebf1bd54cc4539a9ac2332327ab0200bc2a88f/"
    "data/prompts/"
)
SUITE = (
    "https://raw.githubusercontent.com/sail-sg/understand-r1-zero/"
    "dfca49dd460ee7cc8e4a5a162c876a7fd6993b87/"
    "datasets/evaluation_suite/"
)
PAPER_DATA = {  # file in data/: (url, source name, rows, sha256 of the converted file)
    "train_math_lvl3to5.jsonl": (
        LIMR + "math.8k.json",
        "math_lvl3to5_8k",
        8523,
        "293c103b85b314274d6bea7f2c02f3ca6729009c39c83b8ed8037eac068a00cc",
    ),
    "eval/aime24.jsonl": (
        SUITE + "aime/data-00000-of-00001.arrow",
        "aime24",
        30,
        "0bf7e4c7c0ce80d7103d5523867725f79d9f9a89ae37cb4cecb4c43e486cead1",
    ),
    "eval/amc.jsonl": (
        SUITE + "amc/data-00000-of-00001.arrow",
        "amc",
        83,
        "296561e65f6b54f055eaaf5b3938426db1b05c11896bd3712c2d16dce53599f9",
    ),
    "eval/math500.jsonl": (
        SUITE + "math/data-00000-of-00001.arrow",
        "math500",
        500,
        "379cf6b309d258ff9dab589deba37ce93474b482c07a85b4b62ef85f787570f7",
    ),
    "eval/minerva.jsonl": (
        SUITE + "minerva/data-00000-of-00001.arrow",
        "minerva",
        272,
        "ad4994b668d4225063ae9b06f473085e1a36b08fe507c76b0e43478d696aaa2c",
    ),
    "eval/olympiadbench.jsonl": (
        SUITE + "olympiad_bench/data-00000-of-00001.arrow",
        "olympiadbench",
        675,
        "777dbf22c66de3fa54306e9db54e02b21bb4ccca05fa72c53688bfb5638b1cd7",
    ),
}


def convert_rows(rows, source):
    """Rows as a source stores them -> {problem, answer, source[, answers]}: a list of golds
    keeps them all in `answers` (its first is `answer`), and integral float answers (AMC's
    142.0) become integer strings.

    >>> convert_rows([{"prompt": "p", "answer": 142.0}], "amc")
    [{'problem': 'p', 'answer': '142', 'source': 'amc'}]
    >>> convert_rows([{"problem": "q", "answer": ["9.6", "9.60"]}], "minerva")[0]["answers"]
    ['9.6', '9.60']
    """
    out = []
    for r in rows:
        golds = r["answer"] if isinstance(r["answer"], list) else [r["answer"]]
        golds = [str(int(g)) if isinstance(g, float) and g.is_integer() else str(g) for g in golds]
        row = {
            "problem": r["problem"] if "problem" in r else r["prompt"],
            "answer": golds[0],
            "source": source,
        }
        out.append({**row, "answers": golds} if isinstance(r["answer"], list) else row)
    return out


def check_converted(name, text):
    """Raise unless `text` has the rows and checksum recorded for PAPER_DATA[name]."""
    import hashlib

    _, _, n_rows, sha = PAPER_DATA[name]
    got_rows, got_sha = text.count("\n"), hashlib.sha256(text.encode()).hexdigest()
    if (got_rows, got_sha) != (n_rows, sha):
        raise UserError(
            f"data/{name}: {got_rows} rows, sha256 {got_sha[:16]}; expected {n_rows} rows, "
            f"{sha[:16]}: the source has changed"
        )


def download_data(root=DATA):
    """`make data`: fetch, convert, check and atomically write each file of
    PAPER_DATA (skipping good ones)."""
    import hashlib
    import urllib.request

    from tqdm import tqdm

    for name, (url, source, _, sha) in PAPER_DATA.items():
        path = os.path.join(root, name)
        if os.path.exists(path) and hashlib.sha256(open(path, "rb").read()).hexdigest() == sha:
            print(f"data/{name}: present, checksum ok")
            continue
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                raw, bar = (
                    b"",
                    tqdm(
                        total=int(r.headers.get("Content-Length") or 0),
                        unit="B",
                        unit_scale=True,
                        desc=name,
                    ),
                )
                while chunk := r.read(1 << 16):
                    raw += chunk
                    bar.update(len(chunk))
                bar.close()
        except OSError as e:
            raise UserError(
                f"cannot download {url} ({getattr(e, 'reason', e)}): "
                "`make data` needs internet access"
                f" (or put the JSONL files in {root}/ yourself)"
            ) from None
        if url.endswith(".json"):
            rows = json.loads(raw)
        else:
            import pyarrow

            # HF save_to_disk = Arrow IPC stream
            rows = pyarrow.ipc.open_stream(raw).read_all().to_pylist()
        text = "".join(json.dumps(row) + "\n" for row in convert_rows(rows, source))
        check_converted(name, text)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
        print(f"data/{name}: {text.count(chr(10))} problems")


if __name__ == "__main__":
    try:
        download_data()
    except UserError as e:
        print(f"prepare.py: error: {e}", file=sys.stderr)
        sys.exit(2)
