"""`make data`: the paper's public training and evaluation sets, downloaded, converted to drgrpo's
JSONL and checked. Writes data/train_math_lvl3to5.jsonl, its held-out part
data/valid_math_lvl3to5.jsonl (for choosing checkpoints without looking at the test sets), and
data/eval/{aime24,amc,math500,minerva,olympiadbench}.jsonl.

    python data/math/prepare.py [--valid N]
"""

import json
import os
import random
import sys
from collections import Counter

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
# The file that --valid splits, and the file its held-out rows go to. The checksum above is of the
# whole converted file: it is checked before the split, and a split already in data/ is checked by
# joining it back (join_valid).
SPLIT = {"train_math_lvl3to5.jsonl": "valid_math_lvl3to5.jsonl"}
VALID = 500  # --valid's default: rows held out, drawn with random.Random(0)


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


def drawable(rows):
    """[bool] per row: may it be held out? Not a problem that appears twice (stripped, as
    load_jsonl compares them), which would put a validation problem in the training file, and not
    a blank answer, which load_jsonl skips."""
    count = Counter(r["problem"].strip() for r in rows)
    return [count[r["problem"].strip()] == 1 and bool(str(r["answer"]).strip()) for r in rows]


def split_valid(rows, n, seed=0):
    """-> (train_rows, valid_rows): n rows drawn with random.Random(seed) among the drawable ones
    are held out; each part keeps the original order. The same rows, n and seed give the same split.

    >>> rows = [{"problem": p, "answer": "1"} for p in "abcdef"]
    >>> train, valid = split_valid(rows, 2)
    >>> "".join(r["problem"] for r in train), "".join(r["problem"] for r in valid)
    ('abce', 'df')
    >>> split_valid(rows, 0) == (rows, [])
    True
    """
    pool = [i for i, ok in enumerate(drawable(rows)) if ok]
    if not 0 <= n <= len(pool):
        raise UserError(
            f"cannot hold out {n} rows: {len(pool)} have a distinct problem and an answer"
        )
    # positions in the pool, not row indices: join_valid can redraw them from the two parts
    held = {pool[k] for k in random.Random(seed).sample(range(len(pool)), n)}
    return (
        [r for i, r in enumerate(rows) if i not in held],
        [r for i, r in enumerate(rows) if i in held],
    )


def join_valid(train, valid, seed=0):
    """split_valid's inverse: the rows in their original order, with each held-out row put back
    at its draw's position. Where a held-out row sat just after a row that cannot be drawn (a
    repeat, a blank answer) the two come back swapped; the caller's checksum catches that.

    >>> rows = [{"problem": p, "answer": "1"} for p in "abcdef"]
    >>> join_valid(*split_valid(rows, 2)) == rows
    True
    """
    can = drawable(train + valid)  # the same counts as over the original rows
    held = set(random.Random(seed).sample(range(sum(can)), len(valid)))
    out, t, v, k = [], 0, 0, 0  # k: the next row's position among the drawable ones
    for _ in range(len(train) + len(valid)):
        if (k in held and v < len(valid)) or t == len(train):
            out.append(valid[v])
            v, k = v + 1, k + 1
        else:
            out.append(train[t])
            t, k = t + 1, k + can[t]
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


def read_present(root, name):
    """The converted text of PAPER_DATA[name] as already in `root` with its checksum, or None.
    For SPLIT's file that is the file alone (written with --valid 0) or joined with its held-out
    part."""
    import hashlib

    path, sha = os.path.join(root, name), PAPER_DATA[name][3]
    if not os.path.exists(path):
        return None
    text = open(path, "rb").read()
    if hashlib.sha256(text).hexdigest() == sha:
        return text.decode()
    held = name in SPLIT and os.path.join(root, SPLIT[name])
    if not held or not os.path.exists(held):
        return None
    try:
        train, valid = ([json.loads(line) for line in open(p, "rb")] for p in (path, held))
        joined = "".join(json.dumps(r) + "\n" for r in join_valid(train, valid))
    except (ValueError, LookupError, TypeError, AttributeError):
        return None  # damaged or not ours: download afresh
    return joined if hashlib.sha256(joined.encode()).hexdigest() == sha else None


def write_file(root, name, text):
    """Atomically write data/{name}, unless it already holds `text`."""
    path = os.path.join(root, name)
    if os.path.exists(path) and open(path, "rb").read() == text.encode():
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    print(f"data/{name}: {text.count(chr(10))} problems")


def write_data(root, name, text, valid):
    """Write PAPER_DATA[name]'s checked `text` into `root`: for SPLIT's file, less `valid` rows,
    which go to its validation file."""
    if name not in SPLIT:
        return write_file(root, name, text)
    held_path = os.path.join(root, SPLIT[name])
    if not valid:
        write_file(root, name, text)
        if os.path.exists(held_path):
            # left by an earlier split: its problems are in the training file now
            os.remove(held_path)
            print(f"data/{SPLIT[name]}: removed (--valid 0)")
        return
    train, held = split_valid([json.loads(line) for line in text.splitlines()], valid)
    write_file(root, name, "".join(json.dumps(r) + "\n" for r in train))
    write_file(root, SPLIT[name], "".join(json.dumps(r) + "\n" for r in held))


def download_data(root=DATA, valid=VALID):
    """`make data`: fetch, convert, check and atomically write each file of PAPER_DATA (skipping
    good ones), `valid` rows of SPLIT's file held out into its validation file."""
    import urllib.request

    from tqdm import tqdm

    for name, (url, source, _, _) in PAPER_DATA.items():
        text = read_present(root, name)
        if text is not None:
            print(f"data/{name}: present, checksum ok")
            write_data(root, name, text, valid)  # a split of another size is redone here
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
        check_converted(name, text)  # the whole file, before any split
        write_data(root, name, text, valid)


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument(
        "--valid",
        type=int,
        default=VALID,
        metavar="N",
        help="hold out N problems of the MATH training set, drawn with random.Random(0), as "
        "data/valid_math_lvl3to5.jsonl, and leave them out of data/train_math_lvl3to5.jsonl "
        "(default: %(default)s; 0: no split, train on all 8,523 as the paper does)",
    )
    args = p.parse_args()
    if args.valid < 0:
        p.error(f"--valid must be 0 or more (got {args.valid})")
    try:
        download_data(valid=args.valid)
    except UserError as e:
        print(f"prepare.py: error: {e}", file=sys.stderr)
        sys.exit(2)
