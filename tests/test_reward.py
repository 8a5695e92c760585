"""Templates, answer extraction and the verifier reward."""

import pytest

from drgrpo import TEMPLATES, apply_template, extract_answer, grade, last_boxed


def test_templates_match_the_paper():
    q = "What is 1+1?"
    assert apply_template("none", q) == q
    r1 = apply_template("r1", q)
    assert r1.startswith("A conversation between User and Assistant.") and r1.endswith(
        f"User: {q}\nAssistant: <think>"
    )
    qm = apply_template("qwen_math", q)
    assert qm == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within "
        "\\boxed{}."
        f"<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert set(TEMPLATES) == {"r1", "qwen_math", "none"}


def test_extraction_per_template():
    assert (
        extract_answer(r"first \boxed{2}, then \boxed{\frac{1}{2}}", "qwen_math") == r"\frac{1}{2}"
    )
    assert (
        extract_answer(r"\boxed{\left( 3, \frac{\pi}{2} \right)}", "none")
        == r"\left( 3, \frac{\pi}{2} \right)"
    )
    assert extract_answer("no box here", "qwen_math") is None
    assert extract_answer(r"\boxed{unclosed", "qwen_math") is None
    assert extract_answer("reasoning </think> <answer> 42 </answer>", "r1") == "42"
    assert extract_answer(r"\boxed{42}", "r1") is None  # r1 answers live in the tag, not in a box
    assert extract_answer("<answer> 42", "r1") is None
    assert last_boxed(r"\fbox{7}") == "7"


@pytest.mark.parametrize(
    "response,gold",
    [
        (r"so \boxed{\frac12}", "0.5"),
        (r"\boxed{0.5}", r"\frac{1}{2}"),
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"\boxed{(3, \pi/2)}", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"\boxed{14}", "14"),
        (r"\boxed{x=5}", "5"),
    ],
)
def test_equivalent_forms_score_1(response, gold):
    assert grade(response, gold, "qwen_math") == 1.0


def test_wrong_missing_and_truncated_score_0():
    assert grade(r"\boxed{15}", "14", "qwen_math") == 0.0
    assert grade("the answer is 14", "14", "qwen_math") == 0.0  # no \boxed{}: no answer
    assert grade(r"\boxed{14}", "14", "qwen_math", truncated=True) == 0.0  # cut off at max tokens
    # malformed LaTeX never raises
    assert grade(r"\boxed{\frac{1}{0}} \boxed{{{", "14", "qwen_math") == 0.0


def test_r1_and_several_golds():
    assert grade("<think> 2+2 </think> <answer> 4 </answer>", "4", "r1") == 1.0
    assert grade("<think> 2+2 </think> <answer> 5 </answer>", "4", "r1") == 0.0
    assert grade(r"\boxed{2}", ["3", "2"], "none") == 1.0  # any accepted gold counts


@pytest.mark.parametrize(
    "answer,gold,expected",
    [
        # intervals
        (r"[2, 5)", r"[2,5)", 1.0),
        (r"(-\infty, 3]", r"(-\infty,3]", 1.0),
        (r"[2, 5]", r"[2,5)", 0.0),
        # tuples are ordered
        (r"(1, 2, 3)", r"(1,2,3)", 1.0),
        (r"(1, 2)", r"(2,1)", 0.0),
        # \text{} units and choices
        (r"10\text{ cm}", "10", 1.0),
        (r"\text{(B)}", "B", 1.0),
        # percentages
        (r"25\%", "25", 1.0),
        ("0.25", r"25\%", 1.0),
        # degrees, fractions, roots
        (r"30^\circ", "30", 1.0),
        (r"\dfrac{3}{4}", "0.75", 1.0),
        (r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}", 1.0),
        # matrices
        (
            r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}",
            r"\begin{pmatrix}1&2\\3&4\end{pmatrix}",
            1.0,
        ),
        (
            r"\begin{pmatrix} 1 & 2 \\ 3 & 5 \end{pmatrix}",
            r"\begin{pmatrix}1&2\\3&4\end{pmatrix}",
            0.0,
        ),
        # expanded vs factored
        (r"x^2+2x+1", "(x+1)^2", 1.0),
    ],
)
def test_math_verify_equivalences(answer, gold, expected):
    assert grade(f"so the answer is \\boxed{{{answer}}}.", gold, "qwen_math") == expected


def test_r1_format_rule_is_strict_by_default_and_can_be_relaxed():
    loose = "<think> 2+2 </think>\n<answer> 4 </answer>"  # a newline instead of the single space
    assert grade(loose, "4", "r1") == 0.0
    assert grade(loose, "4", "r1", r1_strict=False) == 1.0
    # a box inside the tag is unwrapped
    assert grade(r"</think> <answer> so \boxed{4} </answer>", "4", "r1") == 1.0
