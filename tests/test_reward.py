"""Templates, answer extraction and the verifier reward."""
import pytest

from drgrpo import TEMPLATES, apply_template, extract_answer, grade, last_boxed


def test_templates_match_the_paper():
    q = "What is 1+1?"
    assert apply_template("none", q) == q
    r1 = apply_template("r1", q)
    assert r1.startswith("A conversation between User and Assistant.") and r1.endswith(f"User: {q}\nAssistant: <think>")
    qm = apply_template("qwen_math", q)
    assert qm == ("<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}."
                  f"<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n")
    assert set(TEMPLATES) == {"r1", "qwen_math", "none"}


def test_extraction_per_template():
    assert extract_answer(r"first \boxed{2}, then \boxed{\frac{1}{2}}", "qwen_math") == r"\frac{1}{2}"
    assert extract_answer(r"\boxed{\left( 3, \frac{\pi}{2} \right)}", "none") == r"\left( 3, \frac{\pi}{2} \right)"
    assert extract_answer("no box here", "qwen_math") is None
    assert extract_answer(r"\boxed{unclosed", "qwen_math") is None
    assert extract_answer("reasoning </think> <answer> 42 </answer>", "r1") == "42"
    assert extract_answer(r"\boxed{42}", "r1") is None  # r1 answers live in the tag, not in a box
    assert extract_answer("<answer> 42", "r1") is None
    assert last_boxed(r"\fbox{7}") == "7"


@pytest.mark.parametrize("response,gold", [
    (r"so \boxed{\frac12}", "0.5"),
    (r"\boxed{0.5}", r"\frac{1}{2}"),
    (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"\boxed{(3, \pi/2)}", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"\boxed{14}", "14"),
    (r"\boxed{x=5}", "5"),
])
def test_equivalent_forms_score_1(response, gold):
    assert grade(response, gold, "qwen_math") == 1.0


def test_wrong_missing_and_truncated_score_0():
    assert grade(r"\boxed{15}", "14", "qwen_math") == 0.0
    assert grade("the answer is 14", "14", "qwen_math") == 0.0  # no \boxed{}: no answer
    assert grade(r"\boxed{14}", "14", "qwen_math", truncated=True) == 0.0  # cut off at max tokens
    assert grade(r"\boxed{\frac{1}{0}} \boxed{{{", "14", "qwen_math") == 0.0  # malformed LaTeX never raises


def test_r1_and_several_golds():
    assert grade("<think> 2+2 </think> <answer> 4 </answer>", "4", "r1") == 1.0
    assert grade("<think> 2+2 </think> <answer> 5 </answer>", "4", "r1") == 0.0
    assert grade(r"\boxed{2}", ["3", "2"], "none") == 1.0  # any accepted gold counts
