"""The verifier against the paper's real data (../shared/data, beside the checkout; never copied
into the project).

Each gold answer, written as a model would write it, must grade 1 for its own problem; a different
problem's gold must not match; MATH500's worked solutions must grade correct against their golds.
"""

import json
import os

import pytest

from drgrpo import grade, load_jsonl

DATA = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data"
)
FILES = ["train_math_lvl3to5.jsonl"] + [
    f"eval/{n}.jsonl" for n in ("aime24", "amc", "math500", "minerva", "olympiadbench")
]
pytestmark = pytest.mark.skipif(not os.path.isdir(DATA), reason=f"the real data is not at {DATA}")

# Golds that math-verify cannot read back from \boxed{}; each is
# explained (see the note on the issue).
KNOWN_MISSES = {}


def wrap(gold):
    return f"The answer is \\boxed{{{gold}}}."


@pytest.mark.parametrize("name", FILES)
def test_every_gold_grades_1_and_another_problems_gold_grades_0(name):
    rows = load_jsonl(os.path.join(DATA, name), quiet=True)
    misses = [
        (r["problem"][:60], g)
        for r in rows
        for g in r["golds"]
        if grade(wrap(g), r["golds"], "qwen_math") != 1
    ]
    n_golds = sum(len(r["golds"]) for r in rows)
    rate = 1 - len(misses) / n_golds
    print(
        f"{name}: {n_golds - len(misses)}/{n_golds} golds grade 1 ({100 * rate:.2f}%); "
        f"misses: {misses}"
    )
    unexplained = [m for m in misses if m[1] not in KNOWN_MISSES]
    assert rate >= 0.995 and not unexplained, unexplained
    # false positives: each problem's first gold against the next
    # problem with a different gold string
    pairs = [
        (a["golds"][0], b["golds"])
        for a, b in zip(rows, rows[1:] + rows[:1], strict=True)
        if a["golds"][0].strip() not in [g.strip() for g in b["golds"]]
    ]
    false = [(p, g) for p, g in pairs if grade(wrap(p), g, "qwen_math") != 0]
    print(f"{name}: {len(false)}/{len(pairs)} different golds matched: {false[:10]}")
    assert len(false) <= 0.005 * len(pairs), false


def test_math500_worked_solutions_grade_correct():
    rows = [json.loads(line) for line in open(os.path.join(DATA, "eval", "math500.jsonl"))]
    wrong = [
        (r["answer"], r["solution"][-80:])
        for r in rows
        if grade(r["solution"], r["answer"], "qwen_math") != 1
    ]
    rate = 1 - len(wrong) / len(rows)
    print(
        f"MATH500 solutions graded correct: {len(rows) - len(wrong)}/{len(rows)} "
        f"({100 * rate:.1f}%): {wrong}"
    )
    assert rate >= 0.99, wrong
