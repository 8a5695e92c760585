"""Model output is untrusted input to the verifier: hostile responses grade 0 or 1 within the time
limit, never raise, never run code; a stuck grading process is killed and replaced; a big batch with
hostile responses in it is quick and grades the rest exactly as serial grade() does."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import drgrpo
from drgrpo import grade, grade_batch

MB = 1 << 20
TIMEOUT = 1.0  # per response in these tests (the default, --grade_timeout, is 10 s)
MARGIN = 3.0  # a kill and a fresh worker take ~10 ms; the rest is room for a busy 2-core CPU


def hostile(canary):
    """(name, response, gold, template, expected grade): at least 50
    responses a verifier should survive."""
    touch = f"__import__('os').system('touch {canary}')"
    code = {  # Python that would create the canary file if anything evaluated it
        "import": touch,
        "eval": f"eval(\"open('{canary}', 'w')\")",
        "exec": f"exec(\"import os; os.system('touch {canary}')\")",
        "subprocess": f"__import__('subprocess').call(['touch', '{canary}'])",
        "subclasses": "().__class__.__bases__[0].__subclasses__()",
        "lambda": f"(lambda: open('{canary}', 'w'))()",
        "sum_with_code": f"1+{touch}",
        "globals": f"Symbol('x').__class__.__init__.__globals__['os'].system('touch {canary}')",
        "sympify": f'S("{touch}")',
        "getattr": f"getattr(__builtins__, 'exec')('open(\"{canary}\", \"w\")')",
        "assign": f"x = {touch}",
        "text": f"\\text{{{touch}}}",
        "dollars": f"${touch}$",
    }
    cases = [(f"code_{k}", f"so \\boxed{{{v}}}", "4", "qwen_math", 0.0) for k, v in code.items()]
    cases += [
        ("code_bare", f"The answer is {touch}", "4", "qwen_math", 0.0),
        ("code_none_template", f"\\boxed{{{code['eval']}}}", "4", "none", 0.0),
        ("code_r1", f"<think> x </think> <answer> {touch} </answer>", "4", "r1", 0.0),
        ("code_r1_eval", f"</think> <answer> {code['eval']} </answer>", "4", "r1", 0.0),
        # same string: equal, not run
        ("code_gold_like", f"\\boxed{{{touch}}}", touch, "qwen_math", 1.0),
    ]
    box = {  # the answer inside \boxed{}; gold "4" unless given
        "tower_2": "2^{2^{2^{2^{2^{2^{2}}}}}}",
        "tower_9_plain": "9^9^9^9",
        "tower_9": "9^{9^{9^{9}}}",
        "tower_10": "10^{10^{10^{10}}}",
        "tower_e": "e^{e^{e^{e^{e^{e}}}}}",
        "tower_i": "i^{i^{i^{i}}}",
        "mathverify_issue_65": (
            r"\dfrac{5^{\left(5^{\left(5^{\left(5^5\right)}\right)} - 4\right)} - 5}{16}"
        ),
        "factorial_huge": "100000000!",
        "factorial_of_factorial": "(10!)!",
        "factorial_power": "(10^{7})!",
        "sum_huge": r"\sum_{k=1}^{10^{12}} k^{k}",
        "prod_huge": r"\prod_{k=1}^{10^{9}} k",
        "integral": r"\int_0^1 e^{x^{x^{x}}}\,dx",
        "limit": r"\lim_{n\to\infty} n^{n^{n}}",
        "binomial_huge": r"\binom{10^{10}}{10^{5}}",
        "gamma_huge": r"\Gamma(10^{100})",
        "zeta": r"\zeta(10^{10})",
        "float_huge": "1e999999999",
        "digits_100k": "9" * 100_000,
        "decimal_100k": "0." + "3" * 100_000,
        "frac_bomb": "\\frac{1}{" * 200 + "2" + "}" * 200,
        "sqrt_bomb": "\\sqrt{" * 300 + "2" + "}" * 300,
        "braces_5000": "{" * 5000 + "1" + "}" * 5000,
        "braces_400": "{" * 400 + "1" + "}" * 400,
        "parens_3000": "(" * 3000 + "1" + ")" * 3000,
        "parens_400": "(" * 400 + "1" + ")" * 400,
        "unterminated_env": r"\begin{pmatrix} 1 & 2",
        "unbalanced_left": r"\left( 1, 2 \right.",
        "empty": "",
        "backslashes": "\\" * 2000,
        "dollars": "$" * 10_000,
        "begin_bomb": r"\begin{" * 1000,
        "matrix_60x60": r"\begin{pmatrix}"
        + r"\\".join("&".join(["x"] * 60) for _ in range(60))
        + r"\end{pmatrix}",
        "det_12x12": r"\det\begin{pmatrix}"
        + r"\\".join("&".join(f"x_{{{i}{j}}}" for j in range(12)) for i in range(12))
        + r"\end{pmatrix}",
        "inverse_8x8": r"\begin{pmatrix}"
        + r"\\".join("&".join(f"a_{{{i}{j}}}" for j in range(8)) for i in range(8))
        + r"\end{pmatrix}^{-1}",
        "matrix_200x200": r"\begin{pmatrix}"
        + r"\\".join("&".join(["7"] * 200) for _ in range(200))
        + r"\end{pmatrix}",
        "intervals_200": r"\cup".join(f"[{2 * k},{2 * k + 1}]" for k in range(200)),
        "set_500": str(set(range(500))),
        "div_zero": r"\frac{1}{0}",
        "zero_over_zero": r"\frac{0}{0}",
        "inf_minus_inf": r"\infty-\infty",
        "log_zero": r"\log(0)",
        "reals": r"\mathbb{R}",
        "nul": "1\x002",
        "lone_surrogate": "\ud800",
        "surrogate_pair_halves": "\udfff4\ud83d",
        "noncharacters": "\ufffe\uffff",
        "rtl_override": "\u202e4",
        "zero_width": "4\u200b\u200d",
        "megabyte_sum": "1+" * (MB // 2) + "1",
        "megabyte_junk": "x" * MB,
    }
    golds = {
        "tower_10": "10^{10^{10^{10}}}+1",
        "factorial_power": "(10^{7})!+1",
        "zero_width": "5",
        "rtl_override": "5",
        "matrix_60x60": r"\begin{pmatrix}1\end{pmatrix}",
    }
    cases += [
        (k, f"so the answer is \\boxed{{{v}}}.", golds.get(k, "4"), "qwen_math", 0.0)
        for k, v in box.items()
    ]
    cases += [  # hostile around the answer; the answer itself is right, so these must still score 1
        ("junk_megabyte_then_answer", "x{" * (MB // 2) + r" \boxed{4}", "4", "qwen_math", 1.0),
        ("nul_megabyte_then_answer", "\x00" * MB + r"\boxed{4}", "4", "qwen_math", 1.0),
        ("answer_then_open_braces", r"\boxed{4}" + "{" * MB, "4", "qwen_math", 1.0),
        ("unterminated_box_megabyte", r"\boxed{" * (MB // 7), "4", "qwen_math", 0.0),
        ("r1_megabyte_answer", "</think> <answer> " + "7" * MB + " </answer>", "4", "r1", 0.0),
    ]
    return cases


def test_corpus_is_big_and_names_are_unique(tmp_path):
    cases = hostile(tmp_path / "CANARY")
    assert len(cases) >= 50 and len({c[0] for c in cases}) == len(cases)


def test_each_hostile_response_grades_within_the_timeout_and_runs_nothing(tmp_path):
    canary = tmp_path / "CANARY"
    times, failures = {}, {}
    # the worker is started: its start-up is not timed
    grade_batch([("", "4", "none")], workers=1, timeout=TIMEOUT)
    for name, response, gold, template, expected in hostile(canary):
        t = time.time()
        (got,), failures[name] = grade_batch(
            [(response, gold, template)], workers=1, timeout=TIMEOUT
        )
        times[name] = time.time() - t
        assert got == expected, name
        assert times[name] < TIMEOUT + MARGIN, (name, times[name])
    slowest = sorted(times.items(), key=lambda kv: -kv[1])[:5]
    print(
        f"max {max(times.values()):.2f}s per response (timeout {TIMEOUT}s); slowest {slowest}; "
        f"killed: {sorted(k for k, v in failures.items() if v)}"
    )
    # math-verify spends 5 s on this one: the worker was killed at the timeout
    assert failures["tower_2"] == 1
    assert not canary.exists()


def test_code_in_answers_is_never_run_even_in_this_process(tmp_path):
    canary = tmp_path / "CANARY"
    for name, response, gold, template, expected in hostile(canary):
        if name.startswith("code_"):
            assert grade(response, gold, template) == expected, name
    assert not canary.exists()


@pytest.mark.parametrize(
    "response,template",
    [
        ("\\boxed{" + "1+" * (MB // 2) + "1}", "qwen_math"),
        ("</think> <answer> " + "9" * MB + " </answer>", "r1"),
    ],
)
def test_a_megabyte_answer_is_rejected_before_math_verify(response, template):
    t = time.time()
    assert grade(response, "4", template) == 0.0
    assert time.time() - t < 2.0  # math-verify itself would give up only at its 5 s parsing timeout


def test_a_stuck_worker_is_killed_and_replaced():
    right, wrong = (r"\boxed{4}", "4", "qwen_math"), (r"\boxed{5}", "4", "qwen_math")
    grade_batch([right], workers=2, timeout=TIMEOUT)
    stuck = drgrpo.GRADERS[0][0]
    # SIGSTOP: the process answers nothing and ignores every signal but
    # SIGKILL, like one stuck in C code
    os.kill(stuck.pid, signal.SIGSTOP)
    t = time.time()
    grades, failed = grade_batch(
        [right, right, wrong, right, wrong, right], workers=2, timeout=TIMEOUT
    )
    elapsed = time.time() - t
    # the first item went to the stuck worker
    assert grades == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0] and failed == 1
    assert elapsed < TIMEOUT + MARGIN
    stuck.join(5)
    assert stuck.exitcode == -signal.SIGKILL and drgrpo.GRADERS[0][0].pid != stuck.pid
    # the new worker grades
    assert grade_batch([right, wrong], workers=2, timeout=TIMEOUT) == ([1.0, 0.0], 0)


def test_an_interrupted_batch_leaves_no_stale_answer_for_the_next(monkeypatch):
    right, wrong = (r"\boxed{4}", "4", "qwen_math"), (r"\boxed{5}", "4", "qwen_math")
    grade_batch([right], workers=2, timeout=TIMEOUT)
    old = [proc for proc, _ in drgrpo.GRADERS]

    real_wait = drgrpo.multiprocessing.connection.wait

    # Ctrl-C in grade_batch's wait, when both items have been sent
    def interrupted_wait(objects, timeout=None):
        if any(isinstance(o, drgrpo.multiprocessing.connection.Connection) for o in objects):
            raise KeyboardInterrupt
        return real_wait(objects, timeout)

    monkeypatch.setattr(drgrpo.multiprocessing.connection, "wait", interrupted_wait)
    with pytest.raises(KeyboardInterrupt):
        grade_batch([right, right], workers=2, timeout=TIMEOUT)
    monkeypatch.undo()
    # not the 1.0s sent before
    assert grade_batch([wrong, wrong], workers=2, timeout=TIMEOUT) == ([0.0, 0.0], 0)
    [proc.join(5) for proc in old]
    # every worker, busy or not
    assert old and [proc.exitcode for proc in old] == [-signal.SIGKILL] * len(old)


def benign_items(rng, n):
    """Responses to the demo's test problems, right and wrong, in several
    forms and both answer formats."""
    rows = [json.loads(line) for line in open("data/arith/test.jsonl")]
    forms = [
        lambda x: f"5x=60,x={x}. The answer is \\boxed{{{x}}}.",
        lambda x: f"\\boxed{{\\frac{{{2 * x}}}{{2}}}}",
        lambda x: f"so x = \\boxed{{{x}.0}}",
        lambda x: f"The answer is {x}.",
        lambda x: f"\\boxed{{x={x}}}",
        lambda x: f"\\boxed{{{x + 1}}} no, \\boxed{{{x}}}",
    ]
    items = []
    for _ in range(n):
        r = rng.choice(rows)
        x = int(r["answer"]) + rng.choice([0, 0, 1, -3])  # about half right
        if rng.random() < 0.2:
            items.append((f"<think> x </think> <answer> {x} </answer>", r["answer"], "r1"))
        else:
            items.append((rng.choice(forms)(x), r["answer"], "qwen_math", rng.random() < 0.05))
    return items


def test_1024_responses_with_5_percent_hostile_are_quick_and_grade_like_serial(tmp_path):
    # seconds for the whole batch on 2 workers (each hostile response costs at most the timeout)
    bound = 60.0
    rng = random.Random(0)
    cases = hostile(tmp_path / "CANARY")
    n_hostile = round(0.05 * 1024)
    bad = [rng.choice(cases) for _ in range(n_hostile)]
    good = benign_items(rng, 1024 - n_hostile)
    items = [(c[1], c[2], c[3]) for c in bad] + good
    order = rng.sample(range(len(items)), len(items))
    # workers started: their start-up is not the batch's time
    grade_batch(items[-1:], workers=2, timeout=2.0)
    t = time.time()
    grades, failed = grade_batch([items[i] for i in order], workers=2, timeout=2.0)
    elapsed = time.time() - t
    got = dict(zip(order, grades, strict=True))
    serial = [grade(*it) for it in good]
    print(
        f"1024 responses ({n_hostile} hostile) in {elapsed:.1f}s, {failed} killed at the timeout; "
        f"{sum(serial):.0f}/{len(good)} benign right"
    )
    assert elapsed < bound
    assert [got[i] for i in range(n_hostile, len(items))] == serial and 0.25 < sum(serial) / len(
        good
    ) < 0.75
    assert [got[i] for i in range(n_hostile)] == [c[4] for c in bad]
    assert not (tmp_path / "CANARY").exists()


def test_workers_whose_trainer_died_exit_without_a_word(tmp_path):
    # the trainer SIGKILLed mid-batch: its workers see the pipe close
    # and exit; none prints a traceback
    script = (
        "import os, signal, threading, drgrpo\n"
        "threading.Timer(2.0, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()\n"
        "while True: drgrpo.grade_batch([('\\\\boxed{1}', '1', 'qwen_math')] * 50, "
        "workers=4, timeout=5)\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL
    assert "Traceback" not in r.stderr and "Error" not in r.stderr, r.stderr
