"""The typical wrong response that `make demo` prints after its tables (data/arith/demo.py):
picked from hand-made rollouts.jsonl lines, so a wrong choice (the longest, a correct one,
another step's, the last of a tie) gives another response."""

import doctest
import json

from conftest import load_script

demo = load_script("data/arith/demo.py")


def row(step, tokens, reward=0.0, response=None, truncated=False):
    """One rollouts.jsonl line, with the keys drgrpo.py writes."""
    return {
        "step": step,
        "problem": "Solve for x: 2x+1=7.",
        "golds": ["3"],
        "response": f"r{step}-{tokens}" if response is None else response,
        "answer": None if reward == 0 else "3",
        "tokens": tokens,
        "reward": reward,
        "advantage": -0.5 if reward == 0 else 0.5,
        "truncated": truncated,
    }


# step 1: wrong 4, 10, 13, 25 tokens (mean 13), right 13 and 60 tokens; step 2: wrong 6 and 8
# (mean 7: a tie), right 7; step 3: right only
ROLLOUTS = [
    row(1, 4, response="short"),
    row(1, 13, reward=1.0, response="right, at the mean"),
    row(1, 25, response="long"),
    row(1, 60, reward=1.0, response="right, longest"),
    row(1, 13, response="typical"),
    row(1, 10, response="also near"),
    row(2, 8, response="tie, first"),
    row(2, 7, reward=1.0, response="right, at the mean"),
    row(2, 6, response="tie, second"),
    row(3, 9, reward=1.0),
    row(3, 3, reward=1.0),
]


def test_closest_to_the_mean_of_the_wrong_ones():
    w = demo.typical_wrong(ROLLOUTS, 1)
    # not the longest (25), the shortest (4), nor the correct one at the same length
    assert w["response"] == "typical" and w["tokens"] == 13 and w["reward"] == 0.0
    assert w["mean_incorrect_tokens"] == 13.0 and w["n_incorrect"] == 4


def test_correct_responses_do_not_move_the_mean():
    # with the correct ones (13, 60) the mean would be 22.4 and "long" (25) the closest
    rows = [r for r in ROLLOUTS if r["step"] == 1 and r["response"] != "typical"]
    w = demo.typical_wrong(rows, 1)  # wrong 4, 10, 25: mean 13, 10 the closest
    assert w["response"] == "also near" and w["mean_incorrect_tokens"] == 13.0


def test_tie_goes_to_the_first_in_file_order():
    w = demo.typical_wrong(ROLLOUTS, 2)
    assert w["response"] == "tie, first" and w["n_incorrect"] == 2
    w = demo.typical_wrong(ROLLOUTS[::-1], 2)
    assert w["response"] == "tie, second"


def test_step_without_a_wrong_response_is_none():
    assert demo.typical_wrong(ROLLOUTS, 3) is None
    assert demo.typical_wrong(ROLLOUTS, 4) is None  # not logged
    assert demo.typical_wrong([], 1) is None


def test_only_the_asked_step():
    # step 2's wrong ones alone have mean 7; with step 1's 5 tokens it would be 6.3 and the
    # second of the tie (6) the closest
    assert demo.typical_wrong([row(1, 5), *ROLLOUTS[6:]], 2)["response"] == "tie, first"


def test_first_and_last_step():
    picked = demo.typical_wrongs(ROLLOUTS)
    assert list(picked) == [1, 3]
    assert picked[1]["response"] == "typical" and picked[3] is None
    assert demo.typical_wrongs([]) == {}


def test_read_rollouts(tmp_path):
    assert demo.read_rollouts(str(tmp_path)) == []  # --log_rollouts 0: no file
    # as drgrpo.py writes it: a line a prompt, its responses in a list (here one each)
    lines = []
    for r in ROLLOUTS:
        response = {k: r[k] for k in ("answer", "tokens", "truncated", "reward", "advantage")}
        response["text"] = r["response"]
        lines.append(dict(step=r["step"], problem=r["problem"], golds=r["golds"]))
        lines[-1]["responses"] = [response]
    (tmp_path / "rollouts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert demo.read_rollouts(str(tmp_path)) == ROLLOUTS


def test_excerpt_one_line_each_clipped_and_marked_truncated():
    long = "Guess:" + " I am not sure.\n" * 40 + "\\boxed{2}."
    last = demo.typical_wrong([row(40, 64, response=long, truncated=True)], 40)
    text = demo.wrong_response_excerpt(
        {"grpo": {1: demo.typical_wrong(ROLLOUTS, 1), 40: last}, "dr_grpo": {}}
    )
    print(text)
    lines = text.splitlines()
    assert lines[2].startswith("    grpo step  1: 13 tokens (mean of 4 wrong: 13.0), no answer")
    assert lines[3].endswith('Solve for x: 2x+1=7. -> "typical"')
    assert "step 40: 64 tokens" in lines[4] and lines[4].endswith("truncated at --max_new_tokens")
    shown = lines[5].split(' -> "', 1)[1][:-1]
    # newlines as ⏎, clipped to 300 characters, the answer at the end kept
    assert len(shown) == 300 and "..." in shown and shown.endswith("⏎\\boxed{2}.")
    assert shown.startswith("Guess: I am not sure.⏎ I am not sure.⏎")
    assert lines[6] == " dr_grpo: no rollouts.jsonl (--log_rollouts 0)"


def test_docstring_examples():
    result = doctest.testmod(demo)
    assert result.attempted >= 8 and result.failed == 0
