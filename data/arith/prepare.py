"""The offline demo's data and base model: synthetic equations, a byte-level BPE tokenizer trained
on them, and a tiny Qwen2 pre-trained on their solutions, saved in Hugging Face format so that
`drgrpo.py` loads it like any hub model. Nothing is downloaded.

    # data/arith/{pretrain,train,test}.jsonl (seeded, committed)
    python data/arith/prepare.py
    # ... and the pre-trained base model in that directory
    python data/arith/prepare.py runs/demo/base

The task is built so that the paper's length bias has room to show (its Fig. 1 and 5), the way
tests/toy_bias.py does without a language model: a length the model chooses apart from being right,
chosen on a path that is usually wrong, while another path is usually right.
- Easy problems (70%), `Solve for y: y+3=8.`: the pre-training text solves 45% of them with a
  worked chain, ` 8-3=5. \\boxed{5}.`, which the tiny model learns to get right most of the time;
  the rest it answers with a guess.
- Hard problems (30%), `Solve for y: 4y+3=11.` (y is 1, 2 or 3): the text only ever guesses, so a
  guess is right one time in three, and the worked chain, never learnt for them, does worse: wrong
  answers stay common all through RL.
- A guess is ` Guess:` + 0 to 8 hedges in a fixed order (` I am not sure. It is a guess. ...`; each
  next one with probability 1/2) + ` \\boxed{2}.` with 2 drawn from 1, 2, 3. How many hedges a
  response has does not change whether it is right; they are where the response length can go.
Greedy decoding takes the more common path, the guess (0% on easy problems). RL with the verifier's
0/1 reward learns that the worked chain pays on easy problems (learning is a switch of path, not of
length: both paths start about 13 tokens long). Under GRPO the guesses on easy problems are wrong in
groups whose worked chains are right; the 1/|o_i| in its loss penalises each token of a long wrong
guess less than of a short one, so hedging grows; Dr. GRPO's constant normaliser has no such pull,
and its hedges stay as pre-trained.
"""

import json
import math
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the project root, for drgrpo.py
import drgrpo  # noqa: E402  (first: it sets the OpenMP/vLLM environment before torch is imported)

# isort: split
import torch  # noqa: E402

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SPLITS = {"pretrain": 12000, "train": 2000, "test": 300}  # rows per file; data/arith/<split>.jsonl
# the question is the whole prompt (paper Sec. 2: Qwen2.5-Math does best with no template)
TEMPLATE = "none"
# the unknown's name: 46 letters, so more distinct problems
VARS = "abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ"
HEDGES = [
    " I am not sure.",
    " It is a guess.",
    " It may be wrong.",
    " I could not solve it.",
    " Maybe it is right.",
    " I can not check it.",
    " So I guess.",
    " That is all.",
]
# share of easy problems; of easy ones worked; p(one more hedge)
EASY_FRAC, WORKED_FRAC, MORE_HEDGE = 0.7, 0.45, 0.5


def problems():
    """(easy, hard) problem lists: easy (v, b, x) is v+b=c with b in 1..9, x in 4..9; hard
    (v, a, b, x) is av+b=c with a in 2..9, b in 1..9, x in 1..3."""
    easy = [(v, b, x) for v in VARS for b in range(1, 10) for x in range(4, 10)]
    hard = [
        (v, a, b, x) for v in VARS for a in range(2, 10) for b in range(1, 10) for x in range(1, 4)
    ]
    return easy, hard


def question(p):
    """The problem's text.

    >>> question(("y", 3, 5)), question(("y", 4, 3, 2))
    ('Solve for y: y+3=8.', 'Solve for y: 4y+3=11.')
    """
    if len(p) == 3:
        v, b, x = p
        return f"Solve for {v}: {v}+{b}={x + b}."
    v, a, b, x = p
    return f"Solve for {v}: {a}{v}+{b}={a * x + b}."


def solution_text(p, style, guess=1, hedges=0):
    """The two ways the pre-training text answers: worked (easy problems
    only), or a guess with some hedges.

    >>> solution_text(("y", 3, 5), "worked"), solution_text(("y", 3, 5), "guess", guess=2, hedges=2)
    (' 8-3=5. \\\\boxed{5}.', ' Guess: I am not sure. It is a guess. \\\\boxed{2}.')
    """
    if style == "worked":
        v, b, x = p
        return f" {x + b}-{b}={x}. \\boxed{{{x}}}."
    return " Guess:" + "".join(HEDGES[:hedges]) + f" \\boxed{{{guess}}}."


def make_data(root=HERE, seed=1234):
    """Write the JSONL files (seeded: always the same bytes). Test problems never appear in the
    other two; the training file has no repeats (drgrpo would skip them) and the same share of
    easy problems as the test file."""
    rng = random.Random(seed)
    easy, hard = problems()
    rng.shuffle(easy)
    rng.shuffle(hard)
    n_easy = round(SPLITS["test"] * EASY_FRAC)
    test = easy[:n_easy] + hard[: SPLITS["test"] - n_easy]
    pools = easy[n_easy:], hard[SPLITS["test"] - n_easy :]

    def draw():
        return rng.choice(pools[0] if rng.random() < EASY_FRAC else pools[1])

    def row(p):
        return {"problem": question(p), "answer": str(p[-1])}

    pretrain = []
    for _ in range(SPLITS["pretrain"]):
        p, hedges = draw(), 0
        while hedges < len(HEDGES) and rng.random() < MORE_HEDGE:
            hedges += 1
        worked = len(p) == 3 and rng.random() < WORKED_FRAC
        guess = rng.randint(1, 3)
        pretrain.append(
            {**row(p), "solution": solution_text(p, "worked" if worked else "guess", guess, hedges)}
        )
    # drawn without replacement: no repeats, exact shares
    n_train_easy = round(SPLITS["train"] * EASY_FRAC)
    train = rng.sample(pools[0], n_train_easy) + rng.sample(
        pools[1], SPLITS["train"] - n_train_easy
    )
    rng.shuffle(train)
    train = [row(p) for p in train]
    os.makedirs(root, exist_ok=True)
    for split, rows in (("pretrain", pretrain), ("train", train), ("test", [row(p) for p in test])):
        with open(os.path.join(root, f"{split}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


def build_tokenizer(texts, vocab_size=512):
    """A byte-level BPE trained on `texts`, one token per digit (so arithmetic is
    learnable), Qwen's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )


def build_tiny_model(tokenizer, hidden=128, layers=4, heads=4, tie=True, seed=0):
    """A randomly initialised Qwen2ForCausalLM, the architecture of the paper's base
    models at ~1/1000 the size."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        use_cache=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def token_budget_batches(samples, budget):
    """Length-sorted samples -> micro-batches of as many as fit `budget` padded tokens (count x
    longest), verl's ppo_max_token_len_per_gpu.

    >>> [len(mb) for mb in token_budget_batches([drgrpo.Sample([1] * n, drgrpo.Completion(
    ...     [2], "", False), 0.0, 0.0) for n in (2, 2, 3, 7)], budget=10)]  # rows of 3, 3, 4, 8
    [2, 1, 1]
    """
    out = []
    for s in samples:
        lengths = [drgrpo.span(x)[1] + 1 for x in (out[-1] if out else []) + [s]]
        if not out or len(lengths) * max(lengths) > budget:
            out.append([])
        out[-1].append(s)
    return out


def pretrain_backward(model, batch, pad_id, micro_batch_tokens=2048):
    """The next-token loss on the solution tokens of a batch of Samples (the prompt is given), mean
    over those tokens; backpropagates it and returns it. A random batch is half padding: sorted by
    length and cut into micro-batches of at most micro_batch_tokens padded tokens, each divided by
    the whole batch's token count, it is the same loss and gradient (tests/test_update_levers.py)
    in 1.5x less time."""
    by_length = sorted(batch, key=lambda s: drgrpo.span(s)[1])
    n_tokens, loss = sum(len(s.completion.token_ids) for s in batch), 0.0
    for mb in token_budget_batches(by_length, micro_batch_tokens):
        logp, _ = drgrpo.token_logprobs(model, drgrpo.collate(mb, pad_id, model.device))
        mb_loss = -logp.sum() / n_tokens  # (logp is 0 outside the responses)
        mb_loss.backward()
        loss += mb_loss.detach()
    return loss


def pretrain_tiny(
    out, rows=None, steps=400, batch=128, lr=5e-3, seed=0, template="qwen_math", **model_kw
):
    """Build and pre-train a tiny base model on rows of {problem, solution} (default:
    pretrain.jsonl here); save it, with its tokenizer, in Hugging Face format to `out`. The loss is
    drgrpo's own token log-probs."""
    rows = rows or [json.loads(line) for line in open(os.path.join(HERE, "pretrain.jsonl"))]
    pairs = [(drgrpo.apply_template(template, r["problem"]), r["solution"]) for r in rows]
    tokenizer = build_tokenizer([p + s + "<|im_end|>" for p, s in pairs])
    model = build_tiny_model(tokenizer, seed=seed, **model_kw)
    eos = tokenizer.eos_token_id

    def encode(s):
        return tokenizer(s, add_special_tokens=False)["input_ids"]

    samples = [
        drgrpo.Sample(encode(p), drgrpo.Completion(encode(s) + [eos], s, False), 0.0, 0.0)
        for p, s in pairs
    ]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)

    def warmup_cosine(i):
        return min(1, (i + 1) / 50) * 0.5 * (1 + math.cos(math.pi * i / steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine)
    rng = random.Random(seed)
    from tqdm import tqdm

    bar = tqdm(range(steps), desc="pretrain", dynamic_ncols=True)
    for _ in bar:
        loss = pretrain_backward(model, rng.sample(samples, batch), tokenizer.pad_token_id)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return drgrpo.save_checkpoint(model, tokenizer, out)


if __name__ == "__main__":
    if not all(os.path.exists(os.path.join(HERE, f"{s}.jsonl")) for s in SPLITS):
        make_data()
    if len(sys.argv) > 1:
        print(
            f"pre-training the tiny base model into {pretrain_tiny(sys.argv[1], template=TEMPLATE)}"
        )
