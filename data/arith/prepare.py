"""The offline demo's data and base model: synthetic linear equations, a byte-level BPE tokenizer trained on them,
and a tiny Qwen2 pre-trained on worked solutions, saved in Hugging Face format so that `drgrpo.py` loads it like
any hub model. Nothing is downloaded.

    python data/arith/prepare.py                  # data/arith/{pretrain,train,test}.jsonl (seeded, committed)
    python data/arith/prepare.py runs/demo/base   # ... and the pre-trained base model in that directory

Like a real base model it must already *sometimes* solve the task (RL can only reinforce what it samples: the
paper's point about base models, Sec. 2). Its pre-training text, like web text, answers in three ways: a worked
chain that ends in \\boxed{} (40%), a bare \\boxed{} answer (18%), and a plain "The answer is 12." (42%). Greedy
decoding follows the most common path, the plain one, which the verifier (it reads only the last \\boxed{}) scores 0.
"""
import json
import math
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the project root, for drgrpo.py
import drgrpo  # noqa: E402  (first: it sets the OpenMP/vLLM environment before torch is imported)
import torch  # noqa: E402

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SPLITS = {"pretrain": 12000, "train": 2000, "test": 300}  # rows per file; data/arith/<split>.jsonl


def linear_problems():
    """Every problem of the family: ax+b=c or ax-b=c with a in 2..9, b in 1..9, x in 1..30, c in 10..99."""
    out = []
    for a in range(2, 10):
        for x in range(1, 31):
            for b in range(1, 10):
                for sign in (1, -1):
                    if 10 <= a * x + sign * b <= 99:
                        out.append((a, b * sign, x))
    return out


def solution_text(a, b, x, style):
    """The three ways the pre-training text answers: worked (always boxed), or a bare answer, boxed or plain.

    >>> [solution_text(4, -8, 10, style) for style in ("worked", "boxed", "plain")]
    ['4x=32+8=40,x=40/4=10. The answer is \\\\boxed{10}.', 'The answer is \\\\boxed{10}.', 'The answer is 10.']
    """
    c = a * x + b
    if style == "plain":
        return f"The answer is {x}."
    steps = f"{a}x={c}{'-' if b > 0 else '+'}{abs(b)}={c - b},x={c - b}/{a}={x}. " if style == "worked" else ""
    return steps + f"The answer is \\boxed{{{x}}}."


def make_data(root=HERE, seed=1234, style_weights=(0.4, 0.18, 0.42)):
    """Write the JSONL files (seeded: always the same bytes). Test problems never appear in the other two."""
    rng = random.Random(seed)
    space = linear_problems()
    rng.shuffle(space)
    test, pool = space[:SPLITS["test"]], space[SPLITS["test"]:]
    question = lambda a, b, x: f"Solve for x: {a}x{'+' if b > 0 else '-'}{abs(b)}={a * x + b}."  # noqa: E731
    splits = {"test": test, "train": [rng.choice(pool) for _ in range(SPLITS["train"])],
              "pretrain": [rng.choice(pool) for _ in range(SPLITS["pretrain"])]}
    os.makedirs(root, exist_ok=True)
    for split, problems in splits.items():
        with open(os.path.join(root, f"{split}.jsonl"), "w") as f:
            for a, b, x in problems:
                row = {"problem": question(a, b, x), "answer": str(x)}
                if split == "pretrain":
                    style = rng.choices(("worked", "boxed", "plain"), style_weights)[0]
                    row["solution"] = solution_text(a, b, x, style)
                f.write(json.dumps(row) + "\n")


def build_tokenizer(texts, vocab_size=512):
    """A byte-level BPE trained on `texts`, one token per digit (so arithmetic is learnable), Qwen's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def build_tiny_model(tokenizer, hidden=128, layers=4, heads=4, tie=True, seed=0):
    """A randomly initialised Qwen2ForCausalLM, the architecture of the paper's base models at ~1/1000 the size."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=512, tie_word_embeddings=tie, use_cache=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def pretrain_tiny(out, rows=None, steps=700, batch=64, lr=5e-3, seed=0, template="qwen_math", **model_kw):
    """Build and pre-train a tiny base model on rows of {problem, solution} (default: pretrain.jsonl here); save
    it, with its tokenizer, in Hugging Face format to `out`. The loss is drgrpo's own token log-probs."""
    rows = rows or [json.loads(line) for line in open(os.path.join(HERE, "pretrain.jsonl"))]
    pairs = [(drgrpo.apply_template(template, r["problem"]), r["solution"]) for r in rows]
    tokenizer = build_tokenizer([p + s + "<|im_end|>" for p, s in pairs])
    model = build_tiny_model(tokenizer, seed=seed, **model_kw)
    eos = tokenizer.eos_token_id
    encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    samples = [drgrpo.Sample(encode(p), drgrpo.Completion(encode(s) + [eos], s, False), 0., 0.) for p, s in pairs]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup_cosine = lambda i: min(1, (i + 1) / 50) * 0.5 * (1 + math.cos(math.pi * i / steps))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine)
    rng = random.Random(seed)
    from tqdm import tqdm
    bar = tqdm(range(steps), desc="pretrain", dynamic_ncols=True)
    for _ in bar:
        ids, att, mask = drgrpo.collate(rng.sample(samples, batch), tokenizer.pad_token_id, "cpu")
        logp, _ = drgrpo.token_logprobs(model, ids, att, mask)
        loss = -(logp * mask).sum() / mask.sum()  # next-token loss on the solution tokens (the prompt is given)
        loss.backward()
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
        print(f"pre-training the tiny base model into {pretrain_tiny(sys.argv[1])}")
