"""The update phase's shortcuts change no number: chunked LM head, skipped zero-advantage responses,
and the loss equals TRL GRPOTrainer's on the same batch. Plus the memory bound of the chunked head
on a Qwen-sized vocabulary."""

import copy
import os
import random
import subprocess
import sys
from functools import partial

import pytest
import torch
from conftest import arith

import drgrpo
from drgrpo import Completion, Config, Sample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_qwen(vocab=1000, hidden=32, layers=2, seed=0, heads=2, kv_heads=2):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            tie_word_embeddings=True,
            pad_token_id=0,
            bos_token_id=None,
            eos_token_id=1,
        )
    )


def rollout(seed=0, vocab=1000, G=4, prompts=3):
    """Responses of varied length; the middle group is all-equal (advantage exactly
    0 under any normalisation)."""
    rng = random.Random(seed)
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0]])[
        :prompts, :G
    ]
    adv = drgrpo.group_advantages(rewards, "none")
    out = []
    for i in range(prompts):
        prompt = [rng.randrange(2, vocab) for _ in range(rng.randint(2, 6))]
        for j in range(G):
            out.append(
                Sample(
                    prompt,
                    Completion(
                        [rng.randrange(2, vocab) for _ in range(rng.randint(1, 12))], "", False
                    ),
                    rewards[i, j].item(),
                    adv[i, j].item(),
                )
            )
    return out


def flat_grads(model):
    return torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
            for p in model.parameters()
        ]
    )


def test_fused_head_equals_the_plain_computation(monkeypatch):
    """Section 7's plain log_softmax + gather (--fused_head false) against the fused head
    (FusedLMHead) in one chunk and in chunks of 7 positions: log-probs, entropy, gradients."""
    model = random_qwen()
    inputs = drgrpo.collate(rollout(), 0, "cpu")
    tgt = inputs[1]
    weights = torch.randn(tgt.shape)
    results, fused = [], drgrpo.fused_head_logprobs
    for fused_head, chunk in ((False, None), (True, 10**9), (True, 7)):
        if chunk:  # positions per chunk -> bytes of fp32 logits
            chunk_bytes = chunk * 4 * model.config.vocab_size
            monkeypatch.setattr(
                drgrpo, "fused_head_logprobs", partial(fused, chunk_bytes=chunk_bytes)
            )
        model.zero_grad()
        logp, entropy = drgrpo.token_logprobs(model, inputs, fused_head=fused_head)
        (logp * weights).sum().backward()
        results.append((logp.detach(), entropy, flat_grads(model)))
    assert int(tgt.sum()) > 7 * 3  # several chunks really ran
    assert results[0][1].abs().sum() > 0  # the entropy is computed, not left at 0
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("loss_agg", drgrpo.LOSS_AGGS)
def test_skipping_zero_advantage_responses_changes_neither_loss_nor_update(loss_agg):
    model, batch = random_qwen(), rollout()
    cfg = drgrpo.resolve(
        Config(
            loss_agg=loss_agg,
            micro_batch_size=3,
            train_batch_size=12,
            prompts_per_rollout=3,
            group_size=4,
            max_new_tokens=16,
            grad_clip=1e9,
        )
    )
    # reference: the plain formula over the whole batch, every response included
    ref = copy.deepcopy(model)
    ids, tgt, where = drgrpo.collate(batch, 0, "cpu")
    logp, _ = drgrpo.token_logprobs(ref, (ids, tgt, where), fused_head=False)
    adv = torch.tensor([s.advantage for s in batch]).unsqueeze(1)
    tok_loss, _ = drgrpo.ppo_token_loss(logp, logp.detach(), adv, 0.2, 0.2)
    ref_loss = drgrpo.aggregate_loss(
        tok_loss, tgt, loss_agg, len(batch), int(tgt.sum()), cfg.loss_norm_const
    )
    ref_loss.backward()
    # optimizer_step with SGD(lr=1): the weight change is exactly minus its gradient
    seen = []
    model.model.register_forward_hook(
        lambda mod, args, kwargs, out: seen.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    stats = drgrpo.optimizer_step(
        model, torch.optim.SGD(model.parameters(), lr=1.0), batch, cfg, 0, None
    )
    step = before - torch.cat([p.detach().flatten() for p in model.parameters()])
    # the all-equal group never ran
    assert sum(seen) == 8 and stats["trained_frac"] == pytest.approx(8 / 12)
    assert stats["loss"] == pytest.approx(ref_loss.item(), rel=1e-5, abs=1e-8)
    assert torch.allclose(step, flat_grads(ref), atol=1e-7, rtol=1e-5)
    assert step.abs().max() > 0


TRL_LOSS = {
    "seq_mean_token_sum_norm": "dr_grpo",
    "seq_mean_token_mean": "grpo",
    "token_mean": "dapo",
}


@pytest.mark.parametrize("loss_agg", drgrpo.LOSS_AGGS)
def test_loss_and_gradient_equal_trl_grpo_trainer(tmp_path, loss_agg):
    """Same batch, same weights: drgrpo's loss and gradient are TRL's
    (loss_type dr_grpo / grpo / dapo)."""
    pytest.importorskip(
        "trl", reason="TRL is the benchmark's optional extra (make install brings it)"
    )
    from datasets import Dataset
    from transformers import PreTrainedTokenizerFast
    from trl import GRPOConfig, GRPOTrainer

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import bench

    model, batch, max_new = random_qwen(vocab=300), rollout(vocab=300), 16
    tokenizer = arith.build_tokenizer(["a b c"], vocab_size=300)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    cfg = drgrpo.resolve(
        Config(
            loss_agg=loss_agg,
            micro_batch_size=6,
            train_batch_size=12,
            prompts_per_rollout=3,
            group_size=4,
            max_new_tokens=max_new,
            grad_clip=1e9,
        )
    )
    ours = copy.deepcopy(model)
    before = torch.cat([p.detach().flatten() for p in ours.parameters()])
    stats = drgrpo.optimizer_step(
        ours, torch.optim.SGD(ours.parameters(), lr=1.0), batch, cfg, 0, None
    )
    our_grad = before - torch.cat([p.detach().flatten() for p in ours.parameters()])

    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=12,
        num_generations=4,
        max_completion_length=max_new,
        loss_type=TRL_LOSS[loss_agg],
        beta=0.0,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        gradient_checkpointing=False,
    )
    trainer = GRPOTrainer(
        model=copy.deepcopy(model),
        reward_funcs=lambda completions, **_: [0.0] * len(completions),
        args=args,
        train_dataset=Dataset.from_list([{"prompt": "a"}] * 12),
        processing_class=tokenizer,
    )
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which this bypasses
    roll = {
        "prompt_ids": [s.prompt_ids for s in batch[::4]],
        "completions": [
            [s.completion.token_ids for s in batch[i : i + 4]] for i in range(0, 12, 4)
        ],
        "advantages": [[s.advantage for s in batch[i : i + 4]] for i in range(0, 12, 4)],
    }
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, bench.trl_inputs(roll, 0))
    loss.backward()
    assert stats["loss"] == pytest.approx(loss.item(), rel=1e-5, abs=1e-8)
    assert torch.allclose(our_grad, flat_grads(trainer.model), atol=1e-7, rtol=1e-4)


MEMORY_PROBE = """
import functools, resource, sys, torch
sys.path.insert(0, sys.argv[1])
import drgrpo
from test_update_speed import random_qwen
model = random_qwen(vocab=151936, hidden=16, layers=1)
ids = torch.randint(2, 151936, (2, 4097))
tgt = torch.ones(2, 4096)
where = tgt.nonzero(as_tuple=True)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
# 256 positions a chunk
fused = drgrpo.fused_head_logprobs
drgrpo.fused_head_logprobs = functools.partial(fused, chunk_bytes=256 * 4 * 151936)
logp, _ = drgrpo.token_logprobs(model, (ids, tgt, where))
logp.sum().backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_chunked_head_never_holds_the_full_logits():
    """8,192 response tokens x Qwen's 151,936-word vocabulary: the fp32 logits alone would be 5 GB.
    Forward and backward through the head, 256 positions a chunk, peak at a few chunks' worth (a
    fresh process, so the peak is this alone; at 1,024 positions a chunk the measured peak was
    1.8 GiB for both 8k and 16k tokens)."""
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tests"))
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, ROOT],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    grew = int(out.stdout.split()[-1])
    full_logits, per_chunk = 8192 * 151936 * 4, 256 * 151936 * 4
    message = (
        f"peak grew {grew / 2**30:.2f} GiB; one chunk {per_chunk / 2**30:.2f} GiB, "
        f"all {full_logits / 2**30:.1f}"
    )
    assert grew < 4 * per_chunk and grew < full_logits / 8, message


def test_the_gpu_update_bench_runs_here_on_a_tiny_shape():
    """`tests/bench.py --update_mfu qwen2.5-0.5b` and `--hf_sampler qwen2.5-0.5b` are meant for a
    GPU, which CI lacks: their code paths (bf16 working copy over fp32 weights, synthetic rollout,
    micro-batches, MFU arithmetic; forced-length sampling, static KV cache) are exercised
    here on a tiny shape on the CPU."""
    import bench

    for micro_batch in (1, 4):
        out = bench.update_mfu(
            "tiny", prompts=2, G=2, prompt_len=16, max_new=64, steps=1, micro_batch=micro_batch
        )
        assert out["responses"] == 4 and 4 * 4 <= out["response_tokens"] <= 4 * 64
        assert out["prompt_tokens"] == 4 * 16 and out["response_tokens_per_s"] > 0
        # MFU's arithmetic (no bound at 1: the CPU's bf16 "peak" is not a roofline, and the
        # tiny shape's embedding counts in 6 x params): counting prompt tokens too scales it
        # by exactly all / response tokens
        assert 0 < out["mfu"] < out["mfu_all_tokens"]
        total = out["response_tokens"] + out["prompt_tokens"]
        assert abs(out["mfu_all_tokens"] / out["mfu"] - total / out["response_tokens"]) < 1e-9
    for static in (False, True):
        out = bench.hf_sampler_tps(
            "tiny", sequences=3, prompt_len=5, max_new=7, dtype="bf16", static_cache=static
        )
        assert (
            out["new_tokens"] == 3 * 7
            and out["dtype"] == "torch.bfloat16"
            and out["tokens_per_s"] > 0
        )
