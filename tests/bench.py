"""make bench: drgrpo.py against TRL's GRPOTrainer (loss_type="dr_grpo") on the
same work, on this machine's CPU.

A benchmark, not a test: it prints a table and writes runs/bench/bench.json. Both systems get the
same ~25M-parameter Qwen2 (hidden 512, 8 layers, random init), the same tokenizer, the same 8
MATH prompts in the qwen_math template, the same reward function, G=8, up to 128 new tokens,
Dr. GRPO loss, beta 0, one optimizer step per rollout, fp32, no gradient checkpointing. Each
configuration runs in its own process (so peak RSS is that system's alone), warms up, then
reports the median of the measured steps.

  python tests/bench.py                 # everything (about an hour on 2 cores; saved as it goes)
  python tests/bench.py --no_sweep      # the headline rows only, 5 measured steps (~25 min)
  python tests/bench.py --sweep_only max_new=256
                                        # just these scaling rows, merged into runs/bench/sweep.json
  python tests/bench.py --quick         # fewer steps and no scaling sweep (~5 min), for a
                                        # smoke check
  python tests/bench.py --worker ...    # one measurement (used internally)

Why the model is random: timing needs the right shapes, not a good model. Two
tweaks make the work realistic:
- Response lengths vary: the EOS row of the (tied) embedding is scaled so that a
  response stops with a few percent probability per token, giving lengths from a handful
  of tokens to the cap, as in real RL.
- Rewards are mixed: reward = 1 when a hash of the response text falls under the question's pass
  rate (0/8 ... 8/8 of the hash space, different per question), so some groups are all-correct or
  all-wrong, as in real training.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.chdir(ROOT)
import drgrpo  # noqa: E402  (first: it sets the OpenMP/vLLM environment before torch is imported)

# isort: split
import torch  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "data", "arith"))
import prepare as arith  # noqa: E402  (the demo's tokenizer builder)

OUT = "runs/bench"
MODEL = os.path.join(OUT, "model")
TRAIN_SETS = ["data/train_math_lvl3to5.jsonl", "../shared/data/train_math_lvl3to5.jsonl"]
# of 8, per question: two questions always give all-equal groups
PASS_RATES = [0, 1, 2, 4, 4, 6, 7, 8]
# length of the EOS embedding row relative to the others (sets how soon responses stop)
EOS_SCALE = 6.0


def math_rows():
    for path in TRAIN_SETS:
        if os.path.exists(path):
            return [json.loads(line) for line in open(path)]
    sys.exit(
        "bench: needs the MATH training set for realistic prompts and a 8k-token BPE: "
        "run `make data` first "
        f"(looked in {', '.join(TRAIN_SETS)})"
    )


def bench_reward(text, pass_rate):
    """1.0 for a response whose text hashes under the question's pass rate (out of 8), else 0.0.
    Deterministic."""
    return float(zlib.crc32(text.encode("utf-8", "replace")) % 8 < pass_rate)


def build_model():
    """The ~25M-parameter Qwen2 both systems train (cached in runs/bench/model)."""
    if os.path.exists(os.path.join(MODEL, "config.json")):
        return MODEL
    from transformers import Qwen2Config, Qwen2ForCausalLM

    rows = math_rows()
    tokenizer = arith.build_tokenizer([r["problem"] for r in rows], vocab_size=8192)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=512,
        intermediate_size=1280,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[tokenizer.eos_token_id] *= EOS_SCALE
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return drgrpo.save_checkpoint(model, tokenizer, MODEL)


def prompt_rows():
    """The 8 questions: fixed MATH problems, each with its pass rate
    carried in the `answer` field."""
    rows = math_rows()[: len(PASS_RATES)]
    return [
        {"problem": r["problem"], "answer": str(k)} for r, k in zip(rows, PASS_RATES, strict=False)
    ]


def settings(G, max_new, sampler="hf", steps=6, micro_batch=16):
    """drgrpo's Config for one measurement; TRL's arguments are derived from
    the same numbers in run_trl."""
    return drgrpo.Config(
        model=MODEL,
        template="qwen_math",
        train_data=os.path.join(OUT, "prompts.jsonl"),
        algo="dr_grpo",
        out_dir=os.path.join(OUT, f"drgrpo-{sampler}-G{G}-T{max_new}"),
        group_size=G,
        prompts_per_rollout=8,
        max_new_tokens=max_new,
        lr=1e-6,
        train_batch_size=8 * G,
        micro_batch_size=min(micro_batch, 8 * G),
        sampler=sampler,
        steps=steps,
        save_every=0,
        gradient_checkpointing=False,
        seed=0,
        # never: a finished earlier run in out_dir would otherwise be "resumed", and nothing timed
        resume="never",
    )


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_drgrpo(cfg):
    """Whole RL steps through drgrpo.train, with the bench reward in place of the math verifier."""
    drgrpo.grade_groups = lambda cfg, rows, groups: (
        [
            [bench_reward(c.text, int(r["golds"][0])) for c in g]
            for r, g in zip(rows, groups, strict=True)
        ],
        0,
    )
    drgrpo.train(cfg)
    steps = [json.loads(line) for line in open(os.path.join(cfg.out_dir, "metrics.jsonl"))]
    assert len(steps) == cfg.steps, f"{cfg.out_dir}: {len(steps)} steps logged, {cfg.steps} run"
    return {
        "step_s": [m["step_s"] for m in steps],
        "update_s": [m["update_s"] for m in steps],
        "sample_s": [m["sample_s"] for m in steps],
        "len_mean": [m["len_mean"] for m in steps],
        "zero_std_group_frac": [m["zero_std_group_frac"] for m in steps],
    }


def trl_args(cfg, out_dir):
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=cfg.prompts_per_rollout * cfg.group_size,
        gradient_accumulation_steps=1,
        num_generations=cfg.group_size,
        max_completion_length=cfg.max_new_tokens,
        loss_type="dr_grpo",
        scale_rewards="none",
        beta=0.0,
        num_iterations=1,
        learning_rate=cfg.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        adam_beta1=drgrpo.ADAM["betas"][0],
        adam_beta2=drgrpo.ADAM["betas"][1],
        weight_decay=drgrpo.ADAM["weight_decay"],
        max_grad_norm=cfg.grad_clip,
        epsilon=cfg.clip_eps_low,
        epsilon_high=cfg.clip_eps_high,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_steps=cfg.steps,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=cfg.seed,
        disable_dropout=True,
        dataloader_num_workers=0,
        log_completions=False,
        # transformers' paged-attention engine
        use_transformers_continuous_batching=cfg.sampler == "cb",
    )


def trl_trainer(cfg, out_dir):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    rows = prompt_rows()
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    data = Dataset.from_list(
        [
            {
                "prompt": drgrpo.apply_template(cfg.template, r["problem"]),
                "pass_rate": int(r["answer"]),
            }
            for r in rows
        ]
        * (cfg.steps + 1)
    )

    def reward(completions, pass_rate, **_):
        return [bench_reward(c, k) for c, k in zip(completions, pass_rate, strict=True)]

    return GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=trl_args(cfg, out_dir),
        train_dataset=data,
        processing_class=tokenizer,
    )


def run_trl(cfg):
    """Whole RL steps through GRPOTrainer.train(), timed by a callback
    from step begin to step end."""
    from transformers import TrainerCallback

    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            times.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            times[-1] = time.perf_counter() - times[-1]

    with tempfile.TemporaryDirectory() as tmp:
        trainer = trl_trainer(cfg, tmp)
        trainer.add_callback(Timer())
        trainer.train()
    return {"step_s": times}


def fixed_rollout(cfg):
    """One rollout both update phases train on: token ids from drgrpo's HF sampler (seeded),
    rewards, Dr. GRPO advantages. Cached per (G, max_new) so every process sees the same numbers."""
    path = os.path.join(OUT, f"rollout-G{cfg.group_size}-T{cfg.max_new_tokens}.json")
    if not os.path.exists(path):
        model, tokenizer = drgrpo.load_model(MODEL, "cpu")
        rows = prompt_rows()
        prompts = [drgrpo.apply_template(cfg.template, r["problem"]) for r in rows]
        groups = drgrpo.HFSampler(model, tokenizer, cfg.template).generate(
            prompts, cfg.group_size, cfg.max_new_tokens, seed=1
        )
        rewards = torch.tensor(
            [
                [bench_reward(c.text, int(r["answer"])) for c in g]
                for r, g in zip(rows, groups, strict=True)
            ]
        )
        advantages = drgrpo.group_advantages(rewards, "none")
        roll = {
            "prompt_ids": tokenizer(prompts, add_special_tokens=False)["input_ids"],
            "completions": [[c.token_ids for c in g] for g in groups],
            "rewards": rewards.tolist(),
            "advantages": advantages.tolist(),
        }
        with open(path, "w") as f:
            json.dump(roll, f)
    return json.load(open(path))


def drgrpo_samples(roll):
    return [
        drgrpo.Sample(p, drgrpo.Completion(ids, "", False), r, a)
        for p, g, rs, adv in zip(
            roll["prompt_ids"],
            roll["completions"],
            roll["rewards"],
            roll["advantages"],
            strict=True,
        )
        for ids, r, a in zip(g, rs, adv, strict=True)
    ]


def trl_inputs(roll, pad_id):
    """The batch GRPOTrainer builds after generation: left-padded prompts,
    right-padded completions, masks."""
    prompts = [p for p, g in zip(roll["prompt_ids"], roll["completions"], strict=True) for _ in g]
    comps = [c for g in roll["completions"] for c in g]
    P, T = max(map(len, prompts)), max(map(len, comps))
    prompt_ids = torch.tensor([[pad_id] * (P - len(p)) + p for p in prompts])
    prompt_mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    completion_ids = torch.tensor([c + [pad_id] * (T - len(c)) for c in comps])
    completion_mask = torch.tensor([[1] * len(c) + [0] * (T - len(c)) for c in comps])
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor([a for g in roll["advantages"] for a in g]),
        "num_items_in_batch": completion_mask.sum(),
    }


def update_drgrpo(cfg, reps):
    """drgrpo's update phase alone, `reps` times on the same rollout: ->
    seconds per update, losses."""
    cfg = drgrpo.resolve(cfg)
    roll = fixed_rollout(cfg)
    model, tokenizer = drgrpo.load_model(MODEL, "cpu")
    model.config.use_cache = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, **drgrpo.ADAM)
    times, losses = [], []
    for _ in range(reps):
        samples = drgrpo_samples(roll)
        t = time.perf_counter()
        stats = drgrpo.optimizer_step(model, optimizer, samples, cfg, tokenizer.pad_token_id, None)
        times.append(time.perf_counter() - t)
        losses.append(stats["loss"])
    return {"update_s": times, "loss": losses}


def update_trl(cfg, reps):
    """GRPOTrainer's update phase alone on the same rollout: its compute_loss,
    backward, clip, optimizer step."""
    roll = fixed_rollout(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = trl_trainer(cfg, tmp)
        model = trainer.model
        optimizer = trainer.create_optimizer()
        # set by Trainer's loop, which this bypasses
        trainer.current_gradient_accumulation_steps = 1
        inputs = trl_inputs(roll, trainer.processing_class.pad_token_id)
        times, losses = [], []
        for _ in range(reps):
            t = time.perf_counter()
            model.train()
            loss = trainer.compute_loss(model, inputs)
            trainer.accelerator.backward(loss)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t)
            losses.append(loss.item())
    return {"update_s": times, "loss": losses}


def matmul_peak_gflops(n=1024, reps=20, dtype=torch.float32, device="cpu"):
    """The device's matmul throughput in `dtype` (the roofline for MFU),
    measured on square n x n products."""
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


# Qwen2Config fields; qwen2.5-0.5b: Qwen/Qwen2.5-0.5B's config.json
# (random init: only shapes matter)
SHAPES = {
    "qwen2.5-0.5b": dict(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        rope_theta=1e6,
    ),
    # Qwen/Qwen2.5-Math-1.5B
    "qwen2.5-1.5b": dict(
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        rope_theta=1e6,
    ),
    # a seconds-long check of this code path on a CPU
    "tiny": dict(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
}


def update_mfu(
    shape,
    prompts=8,
    G=8,
    prompt_len=256,
    max_new=2048,
    micro_batch=8,
    steps=3,
    checkpointing=False,
):
    """drgrpo's update phase alone, a bf16 working copy over fp32 master weights as `train` runs it
    on a GPU, on a synthetic rollout of random tokens (prompts x G responses, lengths uniform in
    [max_new/16, max_new], every advantage nonzero so every response is trained): -> tokens/s and
    MFU against this device's measured bf16 matmul peak."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    # 8192-wide products saturate a GPU; a CPU without bf16 units runs bf16 at ~1 GFLOP/s,
    # where one such product takes 20 minutes: there (the tiny shape's check in
    # `make test`) a 256-wide one says enough.
    peak = (
        matmul_peak_gflops(8192, 10, torch.bfloat16, device)
        if device == "cuda"
        else matmul_peak_gflops(256, 3, torch.bfloat16)
    ) * 1e9
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(
        Qwen2Config(
            **SHAPES[shape],
            tie_word_embeddings=True,
            max_position_embeddings=32768,
            use_cache=False,
        )
    ).to(device)
    work = drgrpo.working_copy(model, torch.bfloat16)  # what `train` does with --dtype auto on CUDA
    if checkpointing:
        work.gradient_checkpointing_enable()
    params = sum(p.numel() for p in model.parameters())
    cfg = drgrpo.resolve(
        drgrpo.Config(
            micro_batch_size=micro_batch,
            max_new_tokens=max_new,
            lr=1e-6,
        )
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, **drgrpo.ADAM)
    gen = torch.Generator().manual_seed(0)
    vocab = SHAPES[shape]["vocab_size"]
    samples = [
        drgrpo.Sample(
            torch.randint(vocab, (prompt_len,), generator=gen).tolist(),
            drgrpo.Completion(
                torch.randint(
                    vocab,
                    (int(torch.randint(max_new // 16, max_new + 1, (1,), generator=gen)),),
                    generator=gen,
                ).tolist(),
                "",
                False,
            ),
            0.0,
            (-1.0) ** i * 0.5,
        )
        for i in range(prompts * G)
    ]
    response = sum(len(s.completion.token_ids) for s in samples)
    times = []
    for _ in range(steps + 1):  # the first is warm-up (kernel selection, allocator)
        sync(), (t := time.perf_counter())
        drgrpo.optimizer_step(model, optimizer, samples, cfg, 0, work)
        sync(), times.append(time.perf_counter() - t)
    step_s = statistics.median(times[1:])
    out = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "shape": shape,
        "params": params,
        "bf16_matmul_peak_tflops": peak / 1e12,
        "responses": len(samples),
        "response_tokens": response,
        "prompt_tokens": prompt_len * len(samples),
        "micro_batch": micro_batch,
        "checkpointing": checkpointing,
        "update_s": times,
        "median_s": step_s,
        "response_tokens_per_s": response / step_s,
        # the issue's definition: 6 x params x trained (response) tokens; prompts also run forward
        # and backward, so the second figure counts them too (attention's own FLOPs are in neither)
        "mfu": 6 * params * response / step_s / peak,
        "mfu_all_tokens": 6 * params * (response + prompt_len * len(samples)) / step_s / peak,
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None,
    }
    print(
        f"update phase, {shape} ({params / 1e6:.0f}M params, bf16 working copy) "
        f"on {out['device']}: "
        f"{len(samples)} responses, {response} response + {out['prompt_tokens']} prompt tokens, "
        f"median {step_s:.2f} s -> {out['response_tokens_per_s']:.0f} response tokens/s; "
        f"MFU {100 * out['mfu']:.1f}% "
        f"({100 * out['mfu_all_tokens']:.1f}% counting prompt tokens) of a measured "
        f"{peak / 1e12:.0f} TFLOP/s bf16 peak"
    )
    return out


def hf_sampler_tps(
    shape, sequences=128, prompt_len=256, max_new=512, dtype="auto", static_cache=False
):
    """The HF sampler's decoding speed as `train` runs it: `generate` on the working copy (bf16 on
    CUDA, fp32 on CPU unless dtype says otherwise), sampling at temperature 1, every sequence forced
    to max_new tokens (a random model would otherwise stop anywhere). The first call (warm-up) is
    reported apart. -> new tokens/s"""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(
        Qwen2Config(**SHAPES[shape], tie_word_embeddings=True, max_position_embeddings=32768)
    )
    _, work_dtype = drgrpo.pick_device(drgrpo.Config(dtype=dtype))
    work = drgrpo.working_copy(model.to(device), work_dtype).eval()
    ids = torch.randint(SHAPES[shape]["vocab_size"], (sequences, prompt_len), device=device)
    times = []
    for _ in range(2):
        sync(), (t := time.perf_counter())
        with torch.no_grad():
            out = work.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=1.0,
                top_p=None,
                top_k=None,
                max_new_tokens=max_new,
                min_new_tokens=max_new,
                pad_token_id=0,
                use_cache=True,
                cache_implementation="static" if static_cache else None,
            )
        sync(), times.append(time.perf_counter() - t)
    new = (out.shape[1] - prompt_len) * sequences
    res = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "shape": shape,
        "dtype": str(work_dtype or torch.float32),
        "static_cache": static_cache,
        "sequences": sequences,
        "prompt_len": prompt_len,
        "new_tokens": new,
        "seconds": times,
        "tokens_per_s": new / times[1],
        "warmup_tokens_per_s": new / times[0],
    }
    print(
        f"HF sampler, {shape} ({res['dtype']}{', static KV cache' if static_cache else ''}) "
        f"on {res['device']}: "
        f"{sequences} x {max_new} new tokens after "
        f"{prompt_len}-token prompts: {res['tokens_per_s']:.0f} tokens/s "
        f"(first call {res['warmup_tokens_per_s']:.0f})"
    )
    return res


def worker(system, what, G, max_new, sampler, steps):
    build_model()
    with open(os.path.join(OUT, "prompts.jsonl"), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in prompt_rows()))
    cfg = settings(G, max_new, sampler, steps)
    if what == "step":
        out = run_drgrpo(cfg) if system == "drgrpo" else run_trl(cfg)
    else:
        out = (update_drgrpo if system == "drgrpo" else update_trl)(cfg, steps)
    out["peak_rss_mb"] = peak_rss_mb()
    print("BENCH " + json.dumps(out))


def measure(system, what, G=8, max_new=128, sampler="hf", steps=6, warmup=1, may_fail=False):
    """Run one worker in a fresh process; -> median seconds over the steps
    after warm-up, and its peak RSS."""
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        system,
        what,
        str(G),
        str(max_new),
        sampler,
        str(steps + warmup),
    ]
    t = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = [x for x in proc.stdout.splitlines() if x.startswith("BENCH ")]
    if (proc.returncode or not line) and may_fail:
        print(
            f"  {system} {what} sampler={sampler}: does not run here "
            f"({proc.stderr.strip().splitlines()[-1][:150]})"
        )
        return None
    if proc.returncode or not line:
        sys.exit(f"bench: {' '.join(cmd[2:])} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(line[-1][6:])
    key = "step_s" if what == "step" else "update_s"
    out["median_s"], out["sampler"] = statistics.median(out[key][warmup:]), sampler
    print(
        f"  {system:>6s} {what:>6s} G={G:<2d} max_new={max_new:<3d} sampler={sampler:<4s} "
        f"median {out['median_s']:6.2f} s  peak RSS {out['peak_rss_mb']:5.0f} MB  "
        f"({time.time() - t:.0f} s)",
        flush=True,
    )
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--quick", action="store_true", help="3 measured steps, no scaling sweep")
    p.add_argument(
        "--no_sweep",
        action="store_true",
        help="5 measured steps, no scaling sweep: the headline rows",
    )
    p.add_argument(
        "--trl_cb", action="store_true", help="also time TRL with transformers' continuous batching"
    )
    p.add_argument(
        "--sweep_only",
        nargs="*",
        metavar="ROW",
        help="only scaling-sweep rows (default: G=16 "
        "max_new=64 max_new=256), merged into runs/bench/sweep.json: to finish a sweep cut short",
    )
    p.add_argument(
        "--update_mfu",
        choices=SHAPES,
        help="only the update phase of a model of this shape, bf16, on the "
        "GPU when there is one: tokens/s and MFU, into runs/bench/update_mfu.json (no data needed)",
    )
    p.add_argument(
        "--checkpointing", action="store_true", help="with --update_mfu: gradient checkpointing on"
    )
    p.add_argument(
        "--micro_batch", type=int, default=8, help="with --update_mfu: responses per micro-batch"
    )
    p.add_argument(
        "--responses", type=int, default=64, help="with --update_mfu: responses in the rollout"
    )
    p.add_argument(
        "--max_new",
        type=int,
        default=2048,
        help="with --update_mfu: longest response (lengths are uniform in [max_new/16, max_new])",
    )
    p.add_argument(
        "--static_cache",
        action="store_true",
        help="with --hf_sampler: a static KV cache (on CUDA transformers compiles the decoding)",
    )
    p.add_argument(
        "--hf_sampler",
        choices=SHAPES,
        help="only the HF sampler's decoding speed on a random model of this "
        "shape (128 x 512 new tokens, bf16 working copy on a GPU), into runs/bench/hf_sampler.json",
    )
    p.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        system, what, G, max_new, sampler, steps = args.worker
        return worker(system, what, int(G), int(max_new), sampler, int(steps))
    rows = (
        [] if args.sweep_only is None else args.sweep_only or ["G=16", "max_new=64", "max_new=256"]
    )
    for row in rows:  # checked now, not after an hour of earlier rows
        key, _, value = row.partition("=")
        if key not in ("G", "max_new") or not value.isdigit():
            p.error(f"--sweep_only: {row!r} is not G=N or max_new=N")
    if args.hf_sampler:
        os.makedirs(OUT, exist_ok=True)
        small = dict(sequences=4, prompt_len=8, max_new=8) if args.hf_sampler == "tiny" else {}
        with open(os.path.join(OUT, "hf_sampler.json"), "w") as f:
            json.dump(
                hf_sampler_tps(args.hf_sampler, static_cache=args.static_cache, **small),
                f,
                indent=2,
            )
        return
    if args.update_mfu:
        os.makedirs(OUT, exist_ok=True)
        small = dict(prompts=2, G=2, prompt_len=16, max_new=64) if args.update_mfu == "tiny" else {}
        big = dict(prompts=args.responses // 8, max_new=args.max_new)
        res = update_mfu(
            args.update_mfu,
            checkpointing=args.checkpointing,
            micro_batch=args.micro_batch,
            **(small or big),
        )
        with open(os.path.join(OUT, "update_mfu.json"), "w") as f:
            json.dump(res, f, indent=2)
        return
    build_model()
    steps = 3 if args.quick else 5
    model, _ = drgrpo.load_model(MODEL, "cpu")
    n_params = sum(p.numel() for p in model.parameters())
    del model
    res = {
        "machine": (
            f"{os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads"
        ),
        "matmul_peak_gflops": matmul_peak_gflops(),
        "params": n_params,
        "steps_measured": steps,
    }
    print(
        f"bench: {n_params / 1e6:.1f}M-param Qwen2, 8 prompts, G=8, max 128 new tokens; "
        f"{res['machine']}; "
        f"fp32 matmul peak {res['matmul_peak_gflops']:.0f} GFLOP/s"
    )
    os.makedirs(OUT, exist_ok=True)

    # one measurement; what was measured so far is saved first (the full bench is long)
    def m(*a, **k):
        with open(os.path.join(OUT, "bench.json"), "w") as f:
            json.dump(res, f, indent=2)
        return measure(*a, steps=steps, **k)

    if args.sweep_only is not None:
        path = os.path.join(OUT, "sweep.json")
        if os.path.exists(path):
            res = {**json.load(open(path)), **res}
        for row in rows:
            key, _, value = row.partition("=")
            res[row] = {
                s: measure(s, "step", steps=steps, **{key: int(value)}) for s in ("drgrpo", "trl")
            }
            with open(path, "w") as f:
                json.dump(res, f, indent=2)
        return
    res["update"] = {s: m(s, "update") for s in ("drgrpo", "trl")}
    res["step_hf"] = {s: m(s, "step") for s in ("drgrpo", "trl")}
    # TRL's samplers that run here: HF generate, or transformers' continuous batching (its
    # vLLM mode fails on CPU as shipped: ../shared/notes/vllm-cpu.md). Continuous batching was
    # far slower here (55-129 s a step at 32 new tokens), so it is measured only with
    # --trl_cb; the faster of the two counts.
    trl_cb = m("trl", "step", sampler="cb", may_fail=True) if args.trl_cb else None
    res["trl_continuous_batching"] = trl_cb
    trl_best = min([r for r in (res["step_hf"]["trl"], trl_cb) if r], key=lambda r: r["median_s"])
    res["step_fastest"] = {"drgrpo": m("drgrpo", "step", sampler="vllm"), "trl": trl_best}
    roll = fixed_rollout(settings(8, 128))
    pairs = [
        (len(p), len(c), a)
        for p, g, adv in zip(
            roll["prompt_ids"], roll["completions"], roll["advantages"], strict=True
        )
        for c, a in zip(g, adv, strict=True)
    ]
    res["update_tokens"] = sum(c for _, c, _ in pairs)  # response tokens: the update's useful work
    res["update_trained_tokens"] = sum(c for _, c, a in pairs if a != 0)
    # tokens each system actually runs through forward+backward: drgrpo, prompt + response of the
    # responses with a nonzero advantage (sorted micro-batches: ~no padding); TRL, every row padded
    # to the longest prompt + response
    ran = {
        "drgrpo": sum(p + c for p, c, a in pairs if a != 0),
        "trl": len(pairs) * (max(p for p, _, _ in pairs) + max(c for _, c, _ in pairs)),
    }
    for s in ("drgrpo", "trl"):
        t, peak = res["update"][s]["median_s"], res["matmul_peak_gflops"] * 1e9
        # model FLOPs utilisation
        res["update"][s]["mfu"] = 6 * n_params * res["update_tokens"] / t / peak
        res["update"][s]["hw_util"] = 6 * n_params * ran[s] / t / peak  # FLOPs executed / peak
    if not (args.quick or args.no_sweep):
        res["scale_G"] = {G: {s: m(s, "step", G=G) for s in ("drgrpo", "trl")} for G in (4, 16)}
        res["scale_G"][8] = res["step_hf"]
        res["scale_T"] = {
            T: {s: m(s, "step", max_new=T) for s in ("drgrpo", "trl")} for T in (64, 256)
        }
        res["scale_T"][128] = res["step_hf"]
    report(res)
    with open(os.path.join(OUT, "bench.json"), "w") as f:
        json.dump(res, f, indent=2)
    print(f"wrote {os.path.join(OUT, 'bench.json')}")


def report(res):
    def ratio(k):
        return res[k]["drgrpo"]["median_s"] / res[k]["trl"]["median_s"]

    print(f"\n{'median seconds':<44s} {'drgrpo':>8s} {'TRL':>8s} {'ratio':>6s}")
    rows = [
        ("update phase alone, identical rollout", "update"),
        ("whole step, HF generate in both", "step_hf"),
        ("whole step, fastest sampler each", "step_fastest"),
    ]
    for name, k in rows:
        print(
            f"{name:<44s} {res[k]['drgrpo']['median_s']:8.2f} "
            f"{res[k]['trl']['median_s']:8.2f} {ratio(k):6.2f}"
        )
    rss = {
        s: max(res[k][s]["peak_rss_mb"] for k in ("update", "step_hf")) for s in ("drgrpo", "trl")
    }
    print(
        f"{'peak RSS, MB (HF-sampler runs)':<44s} {rss['drgrpo']:8.0f} {rss['trl']:8.0f} "
        f"{rss['drgrpo'] / rss['trl']:6.2f}"
    )
    for key, name in (
        ("mfu", "update MFU, 6 x params x response tokens"),
        ("hw_util", "update FLOPs executed / peak"),
    ):
        print(
            f"{name:<44s} {100 * res['update']['drgrpo'][key]:7.1f}% "
            f"{100 * res['update']['trl'][key]:7.1f}%"
        )
    print(
        f"update batch: {res['update_tokens']} response tokens, "
        f"{res['update_trained_tokens']} with a nonzero advantage"
    )
    for key, name in (("scale_G", "G"), ("scale_T", "max_new")):
        if key in res:
            print(
                f"whole step vs {name}: "
                + ", ".join(
                    f"{v}: {res[key][v]['drgrpo']['median_s']:.1f} / "
                    f"{res[key][v]['trl']['median_s']:.1f} s"
                    for v in sorted(res[key])
                )
                + "  (drgrpo / TRL)"
            )


if __name__ == "__main__":
    main()
