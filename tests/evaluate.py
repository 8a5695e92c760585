"""`make eval`: accuracy of a model on JSONL benchmarks (paper Table 4), with
drgrpo.py's own sampler and grader, as a table, eval.json, and every response with its grade.

    python tests/evaluate.py --model M --eval_data a.jsonl,b.jsonl
        [--n K --temperature T] [--out_dir D]

Greedy by default (the paper); --n K samples K responses per problem and adds unbiased pass@k. Any
drgrpo.py flag applies (--template, --max_new_tokens, --eval_size, --sampler, ...).
"""

import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project root
import drgrpo  # noqa: E402  (first: it sets the OpenMP/vLLM environment before torch is imported)


def pass_at_k(n, c, k):
    """Unbiased pass@k from n samples, c of them correct (Chen et al. 2021): 1 - C(n-c,k)/C(n,k).

    >>> pass_at_k(4, 1, 2), pass_at_k(4, 0, 2), pass_at_k(4, 3, 2), pass_at_k(5, 2, 1)
    (0.5, 0.0, 1.0, 0.4)
    """
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def main(argv):
    cfg = drgrpo.resolve(drgrpo.parse_args(["train", *argv])[1])
    files = [f for f in cfg.eval_data.split(",") if f]
    if not files:
        raise drgrpo.UserError("--eval_data: give at least one JSONL file")
    drgrpo.check_writable(cfg.out_dir)
    for f in files:  # a bad file fails here, with its file:line, before the model loads
        drgrpo.load_jsonl(f)
    drgrpo.check_model(cfg.model)
    device, dtype = drgrpo.pick_device(cfg)
    model, tokenizer = drgrpo.load_model(cfg.model, device)
    # bf16 on a GPU, as training samples (the HF sampler)
    model = drgrpo.working_copy(model, dtype, True)
    n, temperature = cfg.eval_n, (cfg.temperature if cfg.eval_n > 1 else 0.0)
    results = drgrpo.evaluate(cfg, model, tokenizer, n=n, temperature=temperature)
    ks = [k for k in (2, 4, 8, 16, 32, 64, 128, 256) if k <= n]
    records, table = [], {}
    for name, r in results.items():
        table[name] = {k: v for k, v in r.items() if k not in ("rows", "groups", "grades")}
        if name == "average":
            continue
        if r["grade_failures"]:
            print(
                f"warning: {name}: {r['grade_failures']} responses scored 0: grading took over "
                f"--grade_timeout or crashed"
            )
        table[name].update(
            n_problems=len(r["rows"]),
            samples_per_problem=n,
            **{
                f"pass@{k}": sum(pass_at_k(n, int(sum(g)), k) for g in r["grades"]) / len(r["rows"])
                for k in ks
            },
        )
        records += [
            {
                "benchmark": name,
                "problem": row["problem"],
                "golds": row["golds"],
                "responses": [
                    {
                        "text": c.text,
                        "grade": x,
                        "tokens": len(c.token_ids),
                        "truncated": c.truncated,
                    }
                    for c, x in zip(group, grades, strict=True)
                ],
            }
            for row, group, grades in zip(r["rows"], r["groups"], r["grades"], strict=True)
        ]
    sets = [t for name, t in table.items() if name != "average"]
    table["average"].update(
        {f"pass@{k}": sum(t[f"pass@{k}"] for t in sets) / len(sets) for k in ks}
    )
    cols = ["accuracy", "len_mean", "truncated_frac"] + [f"pass@{k}" for k in ks]
    print(f"{'benchmark':>16s} | {'n':>5s} | " + " | ".join(f"{c:>14s}" for c in cols))
    for name, r in table.items():
        print(
            f"{name:>16s} | {r.get('n_problems', ''):>5} | "
            + " | ".join(
                f"{100 * r[c]:13.1f}%" if c != "len_mean" else f"{r[c]:14.1f}"
                for c in cols
                if c in r
            )
        )
    with open(os.path.join(cfg.out_dir, "eval.json"), "w") as f:
        json.dump(
            {
                "model": cfg.model,
                "template": cfg.template,
                "max_new_tokens": cfg.max_new_tokens,
                "temperature": temperature,
                "results": table,
            },
            f,
            indent=2,
        )
    with open(os.path.join(cfg.out_dir, "eval_responses.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    print(f"wrote {cfg.out_dir}/eval.json and {cfg.out_dir}/eval_responses.jsonl")
    return table


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except drgrpo.UserError as e:
        print(f"drgrpo: error: {e}", file=sys.stderr)
        sys.exit(2)
