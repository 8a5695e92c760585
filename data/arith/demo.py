"""`make demo`: Dr. GRPO vs GRPO on a tiny model, offline, on a CPU, through
the commands a user would type.

    # extra drgrpo.py flags (e.g. --steps 10) go to every train/eval
    python data/arith/demo.py [FLAG ...]

It runs, and prints, exactly these steps (nothing here is RL code: that is all in drgrpo.py):
  1. python data/arith/prepare.py runs/demo/base              the data and the pre-trained base
                                                              model (cached)
  2. python drgrpo.py eval --model runs/demo/base ...         held-out greedy accuracy before RL
  3. python drgrpo.py train --algo dr_grpo ... / --algo grpo    RL from the same base,
                                                              only --algo differs
  4. python drgrpo.py eval --model runs/demo/<algo>/checkpoint-N   ... and after
  5. python drgrpo.py plot runs/demo/dr_grpo runs/demo/grpo    the curves, runs/demo/curves.png
then prints a typical wrong training response of each run's first and last step (from each run's
rollouts.jsonl) and writes runs/demo/summary.json.
"""

import json
import os
import sys
import time

import prepare  # data/arith/prepare.py, beside this file (it imports drgrpo.py from the root)

HERE = os.path.dirname(os.path.abspath(__file__))
drgrpo = prepare.drgrpo
ALGOS = ("dr_grpo", "grpo")
# Every setting of the demo's commands is in demo.toml, beside this file: the paper's Config scaled
# to a 1M-parameter model and a 2-core CPU. Only --algo, --model and --out_dir are given below.
CONFIG = ["--config", os.path.relpath(os.path.join(HERE, "demo.toml"))]
TRAIN = ["--resume", "never"]  # `make demo` again trains again


def untruncated_incorrect_len(m, n, max_new):
    """A step's mean incorrect length without the responses cut at max_new (each is
    max_new long, and wrong): the growth that is not just responses running into the
    limit. n: responses in the step."""
    wrong, cut = (1 - m["accuracy"]) * n, m["truncated_frac"] * n
    return (
        (m["len_incorrect"] * wrong - max_new * cut) / (wrong - cut) if wrong - cut > 0.5 else None
    )


def curve_figures(run_dir, n, max_new):
    """The training-curve numbers of one run (sampled responses, per
    step), from its metrics.jsonl."""
    lines = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    for m in lines:
        m["len_incorrect_untruncated"] = untruncated_incorrect_len(m, n, max_new)

    def mean(key, ms):
        return sum(m[key] for m in ms if m[key] is not None) / max(
            1, sum(m[key] is not None for m in ms)
        )

    first5, last5 = lines[:5], lines[-5:]
    return {
        "reward_first5": mean("reward", first5),
        "reward_last5": mean("reward", last5),
        "len_incorrect_step1": lines[0]["len_incorrect"],
        "len_incorrect_last5": mean("len_incorrect", last5),
        "len_incorrect_untruncated_last5": mean("len_incorrect_untruncated", last5),
        "len_correct_step1": lines[0]["len_correct"],
        "len_correct_last5": mean("len_correct", last5),
        "wrong_frac_min": min(1 - m["accuracy"] for m in lines),
        "truncated_frac": mean("truncated_frac", lines),
        "truncated_frac_last5": mean("truncated_frac", last5),
    }


def read_rollouts(run_dir):
    """A run's rollouts.jsonl (a line a prompt, its responses in a list) as one dict a sampled
    response: step, problem, golds, response, answer, tokens, reward, advantage, truncated. []
    when the run logged none (--log_rollouts 0)."""
    path, flat = os.path.join(run_dir, "rollouts.jsonl"), []
    if not os.path.exists(path):
        return []
    with open(path) as f:
        for line in f:
            group = json.loads(line)
            for r in group.pop("responses"):
                flat.append({**group, "response": r.pop("text"), **r})
    return flat


def typical_wrong(rollouts, step):
    """The wrong response (reward 0) of `step` whose token count is the closest to the mean
    token count of that step's wrong responses; of equally close ones, the first in file order.
    None when the step has no wrong response. Correct responses are left out: the lesson is
    about the length of wrong ones (the paper's Fig. 1). Returns the rollouts.jsonl line plus
    the step's mean wrong length and number of wrong responses.

    >>> rows = [
    ...     {"step": 1, "reward": 0.0, "tokens": 4, "response": "a"},
    ...     {"step": 1, "reward": 1.0, "tokens": 50, "response": "right"},  # not counted
    ...     {"step": 1, "reward": 0.0, "tokens": 12, "response": "b"},
    ...     {"step": 1, "reward": 0.0, "tokens": 9, "response": "c"},
    ...     {"step": 2, "reward": 1.0, "tokens": 5, "response": "d"},
    ... ]
    >>> w = typical_wrong(rows, 1)  # wrong: 4, 12, 9 tokens, mean 8.33: 9 is the closest
    >>> w["response"], w["tokens"], round(w["mean_incorrect_tokens"], 2), w["n_incorrect"]
    ('c', 9, 8.33, 3)
    >>> typical_wrong(rows, 2) is None  # every response of step 2 is right
    True
    """
    # reward <= 0 is what drgrpo.py's len_incorrect counts as wrong
    wrong = [r for r in rollouts if r["step"] == step and r["reward"] <= 0]
    if not wrong:
        return None
    total, n = sum(r["tokens"] for r in wrong), len(wrong)
    # |tokens - total/n| scaled by n: integers, so a tie is exact; min() keeps the first of a tie
    best = min(wrong, key=lambda r: abs(n * r["tokens"] - total))
    return {**best, "mean_incorrect_tokens": total / n, "n_incorrect": n}


def typical_wrongs(rollouts):
    """typical_wrong() at the first and at the last step a run logged, {step: dict or None};
    {} when it logged nothing.

    >>> rows = [{"step": s, "reward": 0.0, "tokens": s, "response": "x" * s} for s in (1, 2, 3)]
    >>> {s: w["response"] for s, w in typical_wrongs(rows).items()}
    {1: 'x', 3: 'xxx'}
    >>> typical_wrongs([])
    {}
    """
    if not rollouts:
        return {}
    steps = [r["step"] for r in rollouts]
    return {s: typical_wrong(rollouts, s) for s in (min(steps), max(steps))}


def one_line(text, width=300):
    r"""`text` on one line, at most `width` characters: a newline shown as "⏎", other unprintable
    characters escaped. A longer text keeps its start and its end (where the answer is), joined
    by "...".

    >>> print(one_line("10-1=9.\n\\boxed{9}.\t"))
    10-1=9.⏎\boxed{9}.\t
    >>> one_line("0123456789" * 3, width=12)
    '01234567...9'
    """
    text = "".join(c if c.isprintable() else "⏎" if c == "\n" else repr(c)[1:-1] for c in text)
    if len(text) <= width:
        return text
    head = width * 2 // 3
    return text[:head] + "..." + text[len(text) - (width - head - 3) :]


def wrong_response_excerpt(examples, width=300):
    r"""What the demo prints from {algo: typical_wrongs()}: per run, the typical wrong response
    of its first and its last step, with the step, its token count, the mean over the step's
    wrong responses, its answer against the gold, and the prompt and response on one line
    (the response clipped to `width` characters).

    >>> w = {"step": 40, "problem": "Solve for x: 2x+1=7.", "golds": ["3"],
    ...      "response": " Guess: I am not sure. It is a guess. \\boxed{2}.", "answer": "2",
    ...      "tokens": 38, "reward": 0.0, "advantage": -0.5, "truncated": False,
    ...      "mean_incorrect_tokens": 37.6, "n_incorrect": 120}
    >>> print(wrong_response_excerpt({"grpo": {1: None, 40: w}, "dr_grpo": {}}))
    a typical wrong sampled response, first and last RL step (reward 0, length closest to the mean
    of that step's wrong responses):
        grpo step  1: no wrong response
        grpo step 40: 38 tokens (mean of 120 wrong: 37.6), answer 2, gold 3
                Solve for x: 2x+1=7. -> " Guess: I am not sure. It is a guess. \boxed{2}."
     dr_grpo: no rollouts.jsonl (--log_rollouts 0)
    """
    lines = [
        "a typical wrong sampled response, first and last RL step (reward 0, length closest to "
        "the mean",
        "of that step's wrong responses):",
    ]
    for algo, by_step in examples.items():
        if not by_step:
            lines.append(f"{algo:>8s}: no rollouts.jsonl (--log_rollouts 0)")
        for step, w in by_step.items():
            if w is None:
                lines.append(f"{algo:>8s} step {step:2d}: no wrong response")
                continue
            answer = "no answer" if w["answer"] is None else f"answer {w['answer']}"
            cut = ", truncated at --max_new_tokens" if w["truncated"] else ""
            lines += [
                f"{algo:>8s} step {step:2d}: {w['tokens']} tokens (mean of {w['n_incorrect']} "
                f"wrong: {w['mean_incorrect_tokens']:.1f}), {answer}, "
                f"gold {' or '.join(w['golds'])}{cut}",
                f'{"":12s}{one_line(w["problem"], 80)} -> "{one_line(w["response"], width)}"',
            ]
    return "\n".join(lines)


def run(*argv):
    """Run `python drgrpo.py ARGV...` in this process, printing the command first."""
    print("\n$ python drgrpo.py " + " ".join(argv), flush=True)
    return drgrpo.main(list(argv))


def main(extra):
    t0 = time.time()
    cfg = drgrpo.parse_args(["train", *CONFIG, "--out_dir", "runs/demo", *extra])[1]
    root, base = cfg.out_dir, cfg.model if "--model" in extra else os.path.join(cfg.out_dir, "base")
    own = {"--out_dir", "--model"}  # set per command below
    extra = [a for i, a in enumerate(extra) if a not in own and (i == 0 or extra[i - 1] not in own)]
    if not all(os.path.exists(os.path.join(HERE, f"{s}.jsonl")) for s in prepare.SPLITS):
        prepare.make_data()
    if not os.path.exists(os.path.join(base, "config.json")):
        print(
            f"$ python data/arith/prepare.py {base}   # the tiny base model, cached for later runs"
        )
        prepare.pretrain_tiny(base, template=cfg.template)
    run("eval", *CONFIG, "--model", base, "--out_dir", base, *extra)
    summary = {"base_model": base, "test_set": cfg.eval_data, "algos": {}}
    argv = {
        algo: [
            "train",
            *CONFIG,
            "--algo",
            algo,
            "--model",
            base,
            "--out_dir",
            os.path.join(root, algo),
            *TRAIN,
            *extra,
        ]
        for algo in ALGOS
    }
    differ = [f"{a} / {b}" for a, b in zip(*argv.values(), strict=True) if a != b]
    print(
        f"\nthe two RL runs below differ only in: {', '.join(differ)} "
        f"(--algo, and where each writes)"
    )
    for algo in ALGOS:
        t, out = time.time(), os.path.join(root, algo)
        run(*argv[algo])
        run(
            "eval",
            *CONFIG,
            "--model",
            os.path.join(out, f"checkpoint-{cfg.steps}"),
            "--out_dir",
            out,
            *extra,
        )
        before, after = (
            json.load(open(os.path.join(d, "eval.json")))["results"]["test"] for d in (base, out)
        )
        summary["algos"][algo] = {
            "accuracy_before": before["accuracy"],
            "accuracy_after": after["accuracy"],
            "n_test": after["n_problems"],
            "len_correct_before": before["len_correct"],
            "len_incorrect_before": before["len_incorrect"],
            "len_correct_after": after["len_correct"],
            "len_incorrect_after": after["len_incorrect"],
            "truncated_frac_after": after["truncated_frac"],
            **curve_figures(out, cfg.prompts_per_rollout * cfg.group_size, cfg.max_new_tokens),
            "steps": cfg.steps,
            "seconds": time.time() - t,
        }
    summary["total_seconds"] = time.time() - t0
    print(
        f"\nheld-out greedy accuracy on {cfg.eval_data} "
        f"(n={summary['algos'][ALGOS[0]]['n_test']}), "
        f"tiny Qwen2 pre-trained offline, {cfg.steps} RL steps each:"
    )
    print(
        f"{'algo':>8s} | {'before':>7s} -> {'after':>7s} | "
        f"{'len correct':>12s} | {'len incorrect':>13s} | time"
    )

    def n(x):  # no correct answer: no length
        return "   -" if x is None else f"{x:4.1f}"

    for algo, r in summary["algos"].items():
        print(
            f"{algo:>8s} | {100 * r['accuracy_before']:6.1f}% -> "
            f"{100 * r['accuracy_after']:6.1f}% | "
            f"{n(r['len_correct_before'])} -> {n(r['len_correct_after'])} | "
            f"{n(r['len_incorrect_before'])}   ->  {n(r['len_incorrect_after'])} | "
            f"{r['seconds']:3.0f}s"
        )
    print(
        f"\ntraining samples ({cfg.prompts_per_rollout} prompts x G={cfg.group_size} per step): "
        "the paper's Fig. 1 numbers, first steps -> last 5 steps"
    )
    print(
        f"{'algo':>8s} | {'reward':>13s} | {'len incorrect':>21s} | {'uncut':>5s} | "
        f"{'len correct':>13s} | "
        "wrong (min) | truncated"
    )
    for algo, r in summary["algos"].items():
        print(
            f"{algo:>8s} | {r['reward_first5']:.2f} -> {r['reward_last5']:.2f} | "
            f"{r['len_incorrect_step1']:4.1f} -> {r['len_incorrect_last5']:4.1f} "
            f"({r['len_incorrect_last5'] / r['len_incorrect_step1']:.2f}x) | "
            f"{n(r['len_incorrect_untruncated_last5'])} | "
            f"{n(r['len_correct_step1'])} -> {n(r['len_correct_last5'])} | "
            f"{100 * r['wrong_frac_min']:10.0f}% | "
            f"{100 * r['truncated_frac']:8.1f}%"
        )
    print(
        "(uncut: incorrect length over the last 5 steps without the responses cut at "
        "--max_new_tokens)"
    )
    # the lesson in words: GRPO's wrong responses grow long, Dr. GRPO's stay short
    summary["typical_wrong"] = {
        algo: typical_wrongs(read_rollouts(os.path.join(root, algo))) for algo in ALGOS
    }
    print("\n" + wrong_response_excerpt(summary["typical_wrong"]))
    with open(os.path.join(root, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"total {summary['total_seconds']:.0f}s; summary: {root}/summary.json")
    try:
        run("plot", *(os.path.join(root, algo) for algo in ALGOS))
    except ImportError:
        print("(install matplotlib for the figure of these runs)")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
