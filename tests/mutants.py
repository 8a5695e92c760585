"""`make mutants`: do the tests catch the bugs a user would hit? Each deliberate bug below is
applied to drgrpo.py alone, in a temporary copy of the project, and the tests that should catch
it run there. A bug that no test catches is printed, and the command exits with 1.

    python tests/mutants.py            # every bug (about 8 minutes on 2 CPU cores)
    python tests/mutants.py M3 M10     # only these
    python tests/mutants.py --list     # the bugs, and the tests that run for each

A bug whose text no longer occurs in drgrpo.py is reported as stale (the code moved): update its
text here, so that the list keeps testing what it says.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOP, SAMPLERS = "tests/test_loop_bugs.py", "tests/test_sampler_bugs.py"
MATH, REWARD = "tests/test_loss_math.py", "tests/test_reward.py"
LEVERS, SPEED = "tests/test_update_levers.py", "tests/test_update_speed.py"
TEMPERED = "tests/test_vllm.py::test_every_log_prob_of_the_update_is_at_the_sampling_temperature"
HEADS, FLAGS = "tests/test_model_heads.py", "tests/test_data.py"

# (name, the bug as a user would meet it, text in drgrpo.py, the buggy text, tests to run)
MUTANTS = [
    # The update and the training loop
    (
        "M1",
        "pi_old never stored before a rollout's second optimizer step (ratio stays 1)",
        '        fill_logprobs(work, trained, cfg, attr="old_logp", pad_id=pad_id)',
        "        pass",
        [LOOP],
    ),
    (
        "M2",
        "the KL term computed and logged but left out of the loss",
        "loss_tok = loss_tok + cfg.kl_beta * kl",
        "loss_tok = loss_tok + 0 * kl",
        [LOOP],
    ),
    (
        "M3",
        "--epochs_per_rollout ignored",
        "    for _ in range(cfg.epochs_per_rollout):",
        "    for _ in range(1):",
        [LOOP],
    ),
    (
        "M6",
        "gradient clipping turned off (the norm still logged)",
        "clip_grad_norm_(model.parameters(), cfg.grad_clip)",
        'clip_grad_norm_(model.parameters(), float("inf"))',
        [LOOP],
    ),
    (
        "M11",
        "the same sampling seed at every step",
        "seed = cfg.seed * 100003 + step",
        "seed = cfg.seed * 100003",
        [LOOP],
    ),
    (
        "M12",
        "each advantage given to the neighbouring sample of its group",
        "advantage=advantages[i, j].item())",
        "advantage=advantages[i, (j + 1) % len(group)].item())",
        [LOOP],
    ),
    # The samplers
    (
        "M5a",
        "HF greedy decoding (evaluation) quietly sampling at temperature 1",
        "dict(do_sample=not greedy,",
        "dict(do_sample=True,",
        [SAMPLERS],
    ),
    (
        "M5b",
        "vLLM greedy decoding (evaluation) quietly sampling at temperature 1",
        "dict(n=n, temperature=temperature,",
        "dict(n=n, temperature=temperature or 1.0,",
        [SAMPLERS],
    ),
    (
        "M7",
        "an EOS exactly at --max_new_tokens counted as truncated (reward 0)",
        "truncated=not stopped and len(ids) >= max_new_tokens",
        "truncated=len(ids) >= max_new_tokens",
        [SAMPLERS],
    ),
    (
        "M8a",
        "the vLLM sampler ignores stop strings",
        "dict(stop=self.stop_strings or None,",
        "dict(stop=None,",
        [SAMPLERS],
    ),
    (
        "M8b",
        "vLLM asked to drop the stop string from its own text (the Completion's comes from tokens)",
        "include_stop_str_in_output=True)",
        "include_stop_str_in_output=False)",
        [SAMPLERS],
    ),
    (
        "M9",
        "the vLLM prefix cache not reset after a weight sync (stale keys and values)",
        "        self.llm.reset_prefix_cache()",
        "        pass  #",
        [SAMPLERS],
    ),
    (
        "M10",
        "the HF sampler keeps the pads after a row's EOS",
        "if t in self.stop_ids), len(ids))]",
        "if t in self.stop_ids and False), len(ids))]",
        [SAMPLERS],
    ),
    (
        "M13",
        "the HF sampler keeps the pads after a row's stop string",
        "        ids = ids[:body] if any(s in text for s in self.stop_strings) else ids",
        "        ids = ids",
        [SAMPLERS],
    ),
    # The loss math, the grader, the fast paths, the sync and resume
    (
        "B1",
        "GRPO without its division by the std (the difficulty bias gone from GRPO too)",
        "        return centered / (std + 1e-8)  #",
        "        return centered  #",
        [MATH],
    ),
    (
        "B2",
        "GRPO's per-response mean divided by the micro-batch's count, not the batch's",
        "return (summed / mask.sum(dim=1).clamp(min=1)).sum() / batch_seqs",
        "return (summed / mask.sum(dim=1).clamp(min=1)).mean()",
        ["tests/test_e2e.py", LEVERS],
    ),
    (
        "B3",
        "Dr. GRPO's constant C = 1 instead of --max_new_tokens",
        'preset["loss_norm_const"] = cfg.max_new_tokens',
        'preset["loss_norm_const"] = 1',
        [MATH, SPEED],
    ),
    (
        "B4",
        "--algo grpo runs Dr. GRPO's toggles",
        '"grpo": ("group", "seq_mean_token_mean", 0.2)',
        '"grpo": ("none", "seq_mean_token_sum_norm", 0.2)',
        [MATH, "tests/test_toy_bias.py"],
    ),
    (
        "B5",
        "PPO's clip without the min (the pessimistic bound)",
        "return -torch.minimum(unclipped, clipped), was_clipped",
        "return -clipped, was_clipped",
        [MATH],
    ),
    (
        "B6",
        "the fused LM head's backward 10% too large",
        "grad_hidden[i : i + ctx.chunk] = d_logits @ weight",
        "grad_hidden[i : i + ctx.chunk] = 1.1 * (d_logits @ weight)",
        [LEVERS, SPEED],
    ),
    (
        "B7",
        "the response mask one position late (the first response token never trained)",
        "    return len(s.prompt_ids) - 1, len(s.prompt_ids) + len(s.completion.token_ids) - 1",
        "    return len(s.prompt_ids), len(s.prompt_ids) + len(s.completion.token_ids) - 1",
        [LEVERS],
    ),
    (
        "B8",
        "the weight sync into vLLM does nothing",
        "        worker.reload_weights(weights_iterator=weights, is_checkpoint_format=True)",
        "        pass",
        ["tests/test_vllm.py"],
    ),
    (
        "B9",
        "a truncated response graded on what it says",
        "if truncated or (template",
        "if (template",
        [REWARD],
    ),
    (
        "B10",
        "a grader that accepts any answer",
        'return float(any(norm == normalize_answer(g) != ""',
        'return float(True or any(norm == normalize_answer(g) != ""',
        [REWARD],
    ),
    (
        "B11",
        "the data order's random state not restored on resume",
        '    rng.setstate(run.pop("rng"))',
        '    run.pop("rng")',
        ["tests/test_resume.py"],
    ),
    (
        "B12",
        "Adam's moments not restored on resume",
        '    optimizer.load_state_dict({**run.pop("optimizer"), "param_groups": groups})',
        '    run.pop("optimizer")',
        ["tests/test_resume.py"],
    ),
    # What a run shows: the doctor, rollouts.jsonl, the evaluation's intervals
    (
        "R1",
        "the doctor lets a run whose responses are all cut go on",
        "    if cut >= MOST_CUT:",
        "    if False:",
        ["tests/test_doctor.py"],
    ),
    (
        "R2",
        "the doctor judges a single step, not the last DOCTOR_WINDOW",
        "    if not cfg.doctor or len(history) < DOCTOR_WINDOW:",
        "    if not cfg.doctor:",
        ["tests/test_doctor.py"],
    ),
    (
        "R3",
        "a resumed run keeps rollouts.jsonl's lines of the steps it does again",
        '    for name in ("rollouts.jsonl", "metrics.jsonl"):',
        '    for name in ("metrics.jsonl",):',
        ["tests/test_resume.py"],
    ),
    (
        "R4",
        "the bootstrap resamples problems but not each problem's samples (--eval_n > 1)",
        "    if k > 1:",
        "    if False:",
        ["tests/test_eval.py"],
    ),
    (
        "R5",
        "evaluation scores a cut response 0 whatever --eval_grade_cut says",
        "cut_is_0=not cfg.eval_grade_cut",
        "cut_is_0=True",
        ["tests/test_eval.py"],
    ),
    # Train what was sampled, at the probability it was sampled
    (
        "T1",
        "the update's pi_theta at temperature 1 while the samples come from logits / T",
        "token_logprobs(work, inputs, cfg.temperature, fused_head",
        "token_logprobs(work, inputs, 1.0, fused_head",
        [TEMPERED],
    ),
    (
        "T2",
        "pi_old and pi_ref (stored before the update) at temperature 1",
        "logp, _ = token_logprobs(model, inputs, cfg.temperature, fused_head",
        "logp, _ = token_logprobs(model, inputs, 1.0, fused_head",
        [TEMPERED],
    ),
    (
        "T3",
        "the fused LM head ignores the temperature",
        "fused_head_logprobs(hidden / temperature, head.weight",
        "fused_head_logprobs(hidden, head.weight",
        [HEADS],
    ),
    (
        "T4",
        "vLLM reports its default raw log-probs, not those of the distribution it sampled",
        'logprobs_mode="processed_logprobs"',
        'logprobs_mode="raw_logprobs"',
        [f"{SAMPLERS}::test_vllm_log_probs_are_those_of_the_distribution_it_sampled"],
    ),
    (
        "T5",
        "the HF sampler fills unset options from the checkpoint's generation config",
        "saved, model.generation_config = model.generation_config, config",
        "saved = model.generation_config",
        [SAMPLERS],
    ),
    (
        "T7",
        "the HF sampler's top-k left to transformers' default (50)",
        "top_k=None if greedy else 0)",
        "top_k=None)",
        [f"{SAMPLERS}::test_hf_sampler_uses_only_the_flags_sampling_options"],
    ),
    (
        "T8",
        "a model whose forward changes its logits after the LM head is accepted",
        "check(off < 1e-3,",
        "check(True,",
        [HEADS],
    ),
    (
        "T9",
        "flags out of range accepted (C < 0, 0 epochs, top_p 0, ...)",
        "check(above and below,",
        "check(True,",
        [FLAGS],
    ),
    (
        "T10",
        "--top_p < 1 trains nucleus samples as on-policy without a word",
        "    if cfg.top_p < 1:  # samples of the nucleus",
        "    if False:  # samples of the nucleus",
        ["tests/test_run_checks.py"],
    ),
    # Around a run: presets, checks that fit the model, its last line, evaluations kept apart
    (
        "P1",
        "--algo dapo leaves the PPO clip ceiling at 0.2 (no clip-higher)",
        '"dapo": ("group", "token_mean", 0.28)',
        '"dapo": ("group", "token_mean", 0.2)',
        ["tests/test_run_checks.py"],
    ),
    (
        "P2",
        "--max_new_tokens past the model's context reaches the engine (a vLLM traceback)",
        "check(longest + cfg.max_new_tokens <= context,",
        "check(True,",
        ["tests/test_run_checks.py"],
    ),
    (
        "P3",
        "an evaluation silently replaces an earlier one",
        'print(f"{cfg.out_dir}/eval.json: replacing an earlier result")',
        "pass",
        ["tests/test_run_checks.py"],
    ),
    (
        "P4",
        "the doctor crashes on a step with held-out numbers (their intervals are tuples)",
        "if not isinstance(v, list | tuple)]",
        "if not isinstance(v, list)]",
        ["tests/test_run_checks.py"],
    ),
    (
        "P5",
        "a --config file's values win over the flags given with it",
        "replace(Config(), **values | args)",
        "replace(Config(), **args | values)",
        ["tests/test_run_checks.py"],
    ),
    (
        "P6",
        "a value of the wrong type in a --config file is taken (a crash later, or a wrong run)",
        'check(ok, f"{path}: {k} = {v!r}: must be of type',
        'check(True, f"{path}: {k} = {v!r}: must be of type',
        ["tests/test_run_checks.py"],
    ),
    (
        "P7",
        "the saved settings leave out what --algo's preset filled in",
        "for k, v in vars(cfg).items())",
        "for k, v in vars(cfg).items() if k not in ('adv_norm', 'loss_agg'))",
        ["tests/test_run_checks.py"],
    ),
    # Faults: a damaged checkpoint, a damaged log line, a failed save
    (
        "F1",
        "a checkpoint's weights not checked on resume (a file cut short crashes the load)",
        '            safe_open(os.path.join(ckpt, name), "pt")',
        "            pass",
        ["tests/test_faults.py"],
    ),
    (
        "F2",
        "damaged log lines kept on resume",
        "if s is not None and s <= step]",
        "if s is None or s <= step]",
        ["tests/test_faults.py"],
    ),
    (
        "F3",
        "a save that fails for lack of space ends in a traceback",
        "    except (OSError, RuntimeError) as e:",
        "    except ValueError as e:",
        ["tests/test_resume.py"],
    ),
]


def copy_project(dest):
    """The project's files (no .git, .venv, runs or caches) under `dest`."""
    skip = shutil.ignore_patterns(".git", ".venv", "runs", "__pycache__", ".pytest_cache")
    shutil.copytree(ROOT, dest, ignore=skip, symlinks=True)


def run_mutant(name, old, new, tests):
    """-> "caught", "MISSED" or "stale", and the last lines pytest printed."""
    with tempfile.TemporaryDirectory(prefix=f"mutant-{name}-") as tmp:
        copy_project(os.path.join(tmp, "p"))
        path = os.path.join(tmp, "p", "drgrpo.py")
        source = open(path).read()
        if source.count(old) != 1:
            return "stale", f"the text occurs {source.count(old)} times in drgrpo.py"
        with open(path, "w") as f:
            f.write(source.replace(old, new))
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
        out = subprocess.run(cmd, cwd=os.path.join(tmp, "p"), capture_output=True, text=True)
        tail = (out.stdout + out.stderr).strip().splitlines()[-1:]
        # pytest's exit code 1: a test failed; 2: collecting the tests failed (both catch the
        # bug); 0: every test passed, the bug went unnoticed; 4 or 5: no test ran (a wrong path).
        verdict = {0: "MISSED", 1: "caught", 2: "caught"}.get(out.returncode, "error")
        return verdict, " ".join(tail)


def main(argv):
    if argv == ["--list"]:
        for name, what, _, _, tests in MUTANTS:
            print(f"{name:>4}  {what}\n      {' '.join(tests)}")
        return 0
    chosen = [m for m in MUTANTS if not argv or m[0] in argv]
    missed = []
    for name, what, old, new, tests in chosen:
        t = time.time()
        verdict, detail = run_mutant(name, old, new, tests)
        print(
            f"{name:>4} {verdict:>6} ({time.time() - t:3.0f} s)  {what}\n      {detail}", flush=True
        )
        if verdict != "caught":
            missed.append(name)
    print(f"\n{len(chosen) - len(missed)} of {len(chosen)} deliberate bugs caught", end="")
    print(f"; not caught: {', '.join(missed)}" if missed else "")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
