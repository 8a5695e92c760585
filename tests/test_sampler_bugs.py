"""The HF and vLLM samplers, checked by what they return: greedy decoding, the truncation flag,
stop tokens, stop strings, and the vLLM engine's weights and prefix cache after a sync. Both
samplers draw from the distribution the flags describe: the model's checkpoint carries a
generation config that would change it (a repetition penalty, top-k, an extra EOS, ...), and
neither may use it.

The model here answers each prompt with a reply of its own length, so the rows of a batch finish
at different times, some exactly at the token budget and some past it. Every reply closes its
answer tag and then keeps writing ("... </answer> ok"), as base models do: the r1 template's stop
string has something to cut."""

import copy

import pytest
import torch
from conftest import arith

import drgrpo

LENGTHS = (2, 5, 9, 14, 20, 27)  # the digits in each prompt's answer
PROMPTS = [f"Say {chr(65 + i)}" for i in range(len(LENGTHS))]
LIKELY, UNLIKELY = "0123456789" * 3, "5678901234" * 3  # each answer starts one way 2/3 of the time
SYNC_TOL = 1e-4  # fp32 engine vs fp32 trainer (tests/test_vllm.py)


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    """A ~150k-parameter Qwen2 (head_dim 32) that answers prompt i with
    "</think> <answer> DIGITS </answer> ok", LENGTHS[i] digits, then EOS. The digits start as
    LIKELY in 2 of 3 pre-training rows, so greedy and sampled replies differ, and the greedy
    choice wins by a wide margin (2/3 against 1/3)."""
    from transformers import GenerationConfig

    rows = [
        {"problem": p, "solution": f"</think> <answer> {digits} </answer> ok"}
        for p, k in zip(PROMPTS, LENGTHS, strict=True)
        for digits in (LIKELY[:k], LIKELY[:k], UNLIKELY[:k])
    ]
    path = arith.pretrain_tiny(
        str(tmp_path_factory.mktemp("varied") / "base"),
        rows=rows,
        steps=150,
        batch=12,
        lr=1e-2,
        hidden=64,
        layers=2,
        heads=2,
        template="none",
    )
    five = drgrpo.load_model(path, "cpu")[1].convert_tokens_to_ids("5")
    more = dict(max_new_tokens=3, bad_words_ids=[[five]])
    GenerationConfig(**JUNK, **more).save_pretrained(path)  # as an instruct model's may say
    model, tok = drgrpo.load_model(path, "cpu")
    assert model.generation_config.repetition_penalty == JUNK["repetition_penalty"]
    return model, tok


# Sampling options a checkpoint's generation_config.json may carry. Each changes what is sampled,
# greedy decoding too (a repetition penalty changes the argmax; the fixture adds a banned word,
# "5", and a 3-token limit). Its EOS ids do end a response, in both samplers (tested below).
JUNK = dict(do_sample=True, temperature=0.3, top_k=2, top_p=0.5, min_p=0.2, repetition_penalty=1.5)
JUNK |= dict(no_repeat_ngram_size=2, typical_p=0.5)


@pytest.fixture(scope="module")
def greedy_refs(varied):
    """Each prompt's greedy reply, by a plain loop: the argmax of the next-token logits, until a
    stop id (kept) or 48 tokens."""
    model, tok = varied
    stops, refs = drgrpo.stop_token_ids(tok), []
    with torch.no_grad():
        for p in PROMPTS:
            ids, new = tok(p, add_special_tokens=False)["input_ids"], []
            while len(new) < 48 and (not new or new[-1] not in stops):
                new.append(int(model(torch.tensor([ids + new])).logits[0, -1].argmax()))
            refs.append(new)
    texts = [tok.decode(r, skip_special_tokens=True) for r in refs]
    assert texts == [f"</think> <answer> {LIKELY[:k]} </answer> ok" for k in LENGTHS]
    assert all(r[-1] in stops for r in refs) and len({len(r) for r in refs}) == len(refs)
    return refs


@pytest.fixture(scope="module")
def engine(varied):
    """A vLLM sampler for the model, with the r1 template's stop string ("</answer>")."""
    pytest.importorskip("vllm", reason="vLLM is not installed")
    model, tok = varied
    return drgrpo.VLLMSampler(model, tok, "r1", max_model_len=320)


def without_stop_strings(sampler):
    """The same sampler (the same engine) with the template "none": it stops at EOS only."""
    plain = copy.copy(sampler)
    plain.stop_strings = drgrpo.STOP_STRINGS["none"]
    return plain


def plain_logprobs(model, prompt_ids, new_ids):
    """The model's log-prob of each of new_ids after prompt_ids: one forward pass."""
    seq = torch.tensor([prompt_ids + new_ids])
    with torch.no_grad():
        logp = model(seq).logits[0, len(prompt_ids) - 1 : -1].log_softmax(-1)
    return logp.gather(-1, seq[0, len(prompt_ids) :, None])[:, 0]


def tokens(groups):
    return [[c.token_ids for c in g] for g in groups]


# --- greedy decoding (evaluation's temperature 0) ----------------------------------------------
def test_hf_greedy_is_the_argmax_continuation(varied, greedy_refs):
    """Evaluation decodes greedily: every row of a batch must be the argmax continuation, the
    same for any seed, or reported accuracies are noisy samples."""
    model, tok = varied
    sampler = drgrpo.HFSampler(model, tok, "none")
    prompts = PROMPTS * 4  # a sampler at temperature 1 would pick UNLIKELY in some rows
    for seed in (0, 1):
        out = sampler.generate(prompts, 1, 48, temperature=0, seed=seed)
        assert tokens(out) == [[r] for r in greedy_refs * 4]


def test_vllm_greedy_is_the_argmax_continuation(engine, greedy_refs):
    """The same for the vLLM sampler (template none: it stops at EOS, as the reference does)."""
    sampler = without_stop_strings(engine)
    for seed in (0, 1):
        out = sampler.generate(PROMPTS * 4, 1, 48, temperature=0, seed=seed)
        assert tokens(out) == [[r] for r in greedy_refs * 4]


# --- the token budget: an EOS at the last allowed token is a finished response -----------------
def check_budget(groups, refs, budget, stops):
    for g, ref in zip(groups, refs, strict=True):
        c = g[0]
        if len(ref) <= budget:  # finished within the budget, the last one exactly at it
            assert (c.token_ids, c.truncated) == (ref, False)
            assert c.token_ids[-1] in stops
        else:  # cut: the first `budget` tokens, flagged (graded 0)
            assert (c.token_ids, c.truncated) == (ref[:budget], True)


@pytest.mark.parametrize("which", [2, 4])
def test_hf_eos_at_the_budget_is_not_truncated(varied, greedy_refs, which):
    """A response whose EOS is its max_new_tokens-th token is complete: flagging it truncated
    would grade a right answer 0. Shorter rows finish early, longer ones are cut."""
    model, tok = varied
    budget = len(greedy_refs[which])
    out = drgrpo.HFSampler(model, tok, "none").generate(PROMPTS, 1, budget, temperature=0)
    check_budget(out, greedy_refs, budget, drgrpo.stop_token_ids(tok))
    assert [g[0].truncated for g in out] == [i > which for i in range(len(PROMPTS))]


def test_vllm_eos_at_the_budget_is_not_truncated(engine, greedy_refs, varied):
    """The same for the vLLM sampler."""
    budget = len(greedy_refs[2])
    out = without_stop_strings(engine).generate(PROMPTS, 1, budget, temperature=0)
    check_budget(out, greedy_refs, budget, drgrpo.stop_token_ids(varied[1]))


# --- stop tokens: HF generate() pads a finished row, the completion must end at its EOS ---------
def test_hf_completions_end_at_their_first_stop_token(varied):
    """Rows of a batch finish at different times and generate() pads the early ones. A completion
    with the pads would train the model on tokens it never sampled and count them in its length."""
    model, tok = varied
    stops = drgrpo.stop_token_ids(tok)
    groups = drgrpo.HFSampler(model, tok, "none").generate(PROMPTS, 4, 30, seed=0)
    comps = [c for g in groups for c in g]
    assert len({len(c.token_ids) for c in comps}) > 3  # the rows did finish at different times
    assert any(c.truncated for c in comps) and any(not c.truncated for c in comps)
    for c in comps:
        assert not any(t in stops for t in c.token_ids[:-1])  # nothing after the first stop id
        assert c.truncated == (c.token_ids[-1] not in stops)
        assert len(c.token_ids) <= 30 and (not c.truncated or len(c.token_ids) == 30)
        assert tok.pad_token_id not in c.token_ids
        assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)


def test_hf_completions_end_at_their_stop_string(varied):
    """With the r1 template a row that wrote "</answer>" is finished: its completion must hold the
    tokens up to the stop string and not the padding after it."""
    model, tok = varied
    groups = drgrpo.HFSampler(model, tok, "r1").generate(PROMPTS, 1, 48, temperature=0)
    for k, g in zip(LENGTHS, groups, strict=True):
        c = g[0]
        assert c.text == f"</think> <answer> {LIKELY[:k]} </answer>" and not c.truncated
        assert tok.pad_token_id not in c.token_ids


# --- stop strings: vLLM ends the response at the r1 template's closing tag ---------------------
def test_vllm_stops_at_the_stop_string_and_keeps_it(engine, varied):
    """r1 grades the text up to "</answer>": the response must stop there (no "ok", no EOS) and
    keep the tag, or a right answer grades 0 (text after the tag, or no closing tag)."""
    tok = varied[1]
    stops = drgrpo.stop_token_ids(tok)
    greedy = engine.generate(PROMPTS, 1, 48, temperature=0)
    for k, g in zip(LENGTHS, greedy, strict=True):
        assert g[0].text == f"</think> <answer> {LIKELY[:k]} </answer>"
        assert drgrpo.grade(g[0].text, LIKELY[:k], "r1", g[0].truncated) == 1.0
    sampled = engine.generate(PROMPTS, 4, 48, seed=0)
    for c in (c for g in sampled + greedy for c in g):
        assert not c.truncated and c.text.endswith(" </answer>") and "ok" not in c.text
        assert c.token_ids[-1] not in stops
        assert tok.decode(c.token_ids, skip_special_tokens=True) == c.text


def test_vllm_own_text_keeps_the_stop_string(engine, monkeypatch):
    """The Completion's text is decoded from its tokens; vLLM's own text of the response (what
    its outputs, logs and streams show) must be the same text, closing tag included."""
    outputs = []

    def spy(*args, real=engine.llm.generate, **kw):
        outputs.extend(real(*args, **kw))
        return outputs

    monkeypatch.setattr(engine.llm, "generate", spy)
    groups = engine.generate(PROMPTS, 2, 48, seed=0)
    assert [[c.text for c in g] for g in groups] == [[c.text for c in o.outputs] for o in outputs]


# --- the weight sync: the prefix cache must not serve keys and values of the old weights --------
def test_vllm_sync_resets_the_prefix_cache(engine, varied):
    """A prompt longer than one KV-cache block, sampled before an update, stays in vLLM's prefix
    cache. After the sync, the next rollout of the same prompt must come from the new weights: its
    log-probs equal the trainer's."""
    model, tok = copy.deepcopy(varied[0]), varied[1]
    block = engine.llm.llm_engine.vllm_config.cache_config.block_size
    prompt = "0123456789" * (block // 10 + 4) + PROMPTS[2]
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert block < len(ids) < 320 - 16

    def gap():
        out = engine.generate([prompt], 2, 16, seed=0)[0]
        return max(
            (torch.tensor(c.logprobs) - plain_logprobs(model, ids, c.token_ids)).abs().max().item()
            for c in out
        )

    try:
        assert gap() < SYNC_TOL  # the same weights; the prompt is now in the cache
        with torch.no_grad():  # an update
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        assert gap() > 1e-2  # the engine has the old weights
        engine.sync(model)
        assert gap() < SYNC_TOL
    finally:  # the engine back to the module's weights, for the other tests
        engine.sync(varied[0])


# --- the same response from both samplers, and the distribution the flags describe --------------
def first_stop(tok, ids, stop):
    """How many tokens a response keeps: up to the one whose text completes `stop`."""
    return next(k for k in range(1, len(ids) + 1) if stop in tok.decode(ids[:k]))


@pytest.mark.parametrize(
    "stop",
    [
        "</answer>",  # ends where a token ends
        "</ans",  # ends inside a token (" </" "answer" ">")
        "</answer> o",  # ends inside the token " ok"
        "ok",  # the last token before EOS
    ],
)
def test_hf_and_vllm_keep_the_same_tokens_and_cut_flags(varied, engine, greedy_refs, stop):
    """A differential test, greedy: the same prompts and stop string through both samplers give the
    same token ids and the same `truncated`: each reply up to and including the token that
    completes the stop string, never a pad after it. The budget is the third reply's stop token:
    shorter replies end early (generate() pads their rows), the third ends exactly at the limit
    (stopped, not cut) and the longer ones are cut."""
    model, tok = varied
    hf = drgrpo.HFSampler(model, tok, "none")
    vl = copy.copy(engine)
    hf.stop_strings = vl.stop_strings = [stop]
    ends = [first_stop(tok, ref, stop) for ref in greedy_refs]
    budget = ends[2]
    want = [
        (ref[:e], False) if e <= budget else (ref[:budget], True)
        for ref, e in zip(greedy_refs, ends, strict=True)
    ]
    assert [w[1] for w in want] == [False] * 3 + [True] * 3
    got = {}
    for sampler in (hf, vl):
        out = sampler.generate(PROMPTS, 1, budget, temperature=0)
        got[sampler.name] = [(g[0].token_ids, g[0].truncated) for g in out]
    assert got["hf"] == got["vllm"] == want
    whole = hf.generate(PROMPTS, 1, 48, temperature=0)  # no limit: every reply stops
    assert [(g[0].token_ids, g[0].truncated) for g in whole] == [
        (r[:e], False) for r, e in zip(greedy_refs, ends, strict=True)
    ]


def test_hf_sampler_uses_only_the_flags_sampling_options(varied, monkeypatch):
    """The checkpoint's generation config (JUNK) sets a repetition penalty, top-k, min-p, ...:
    generate() would fill in every option drgrpo does not set from it. The logits processors in
    use must be only those the flags ask for, and the model keeps its own config afterwards."""
    from transformers.generation.utils import GenerationMixin

    model, tok = varied
    seen, real = [], GenerationMixin._get_logits_processor

    def spy(self, *args, **kw):
        processors = real(self, *args, **kw)
        seen.append(sorted(type(p).__name__ for p in processors))
        return processors

    monkeypatch.setattr(GenerationMixin, "_get_logits_processor", spy)
    sampler = drgrpo.HFSampler(model, tok, "none")
    for temperature, top_p, n in ((1.0, 1.0, 4), (0.7, 0.9, 4), (0.0, 1.0, 1)):
        sampler.generate(PROMPTS[:2], n, 8, temperature=temperature, top_p=top_p)
    assert seen == [[], ["TemperatureLogitsWarper", "TopPLogitsWarper"], []]
    assert model.generation_config.repetition_penalty == JUNK["repetition_penalty"]


@pytest.mark.parametrize("temperature", [0.5, 1.7])
def test_vllm_log_probs_are_those_of_the_distribution_it_sampled(
    varied, engine, temperature, monkeypatch
):
    """At T != 1 vLLM samples softmax(logits / T): the log-probs it reports (logprob_gap's one
    side) and the trainer's (token_logprobs, both heads) must be that distribution's, ~0 apart.
    Breaking either side shows: the trainer at T = 1, or the engine reporting the raw log-probs
    (vLLM's default logprobs_mode, switched on in this engine's sampler), is far off."""
    model, tok = varied

    def gap(t, fused_head=True):
        groups = engine.generate(PROMPTS, 4, 48, temperature=temperature, seed=1)
        samples = [
            drgrpo.Sample(tok(p, add_special_tokens=False)["input_ids"], c, 0.0, 0.0)
            for p, g in zip(PROMPTS, groups, strict=True)
            for c in g
        ]
        with torch.no_grad():
            inputs = drgrpo.collate(samples, 0, "cpu")
            logp, _ = drgrpo.token_logprobs(model, inputs, t, fused_head=fused_head)
        ours = torch.cat([logp[i, slice(*drgrpo.span(s))] for i, s in enumerate(samples)])
        theirs = torch.tensor([x for s in samples for x in s.completion.logprobs])
        return (ours - theirs).abs().max().item()

    assert gap(temperature) < SYNC_TOL and gap(temperature, fused_head=False) < SYNC_TOL
    assert gap(1.0) > 0.05  # the trainer's side broken
    sampler = engine.llm.llm_engine.model_executor.driver_worker.worker.model_runner.sampler
    for part in (sampler, sampler.topk_topp_sampler):
        monkeypatch.setattr(part, "logprobs_mode", "raw_logprobs")
    assert gap(temperature) > 0.05  # the sampler's side broken


def test_both_samplers_stop_at_the_generation_configs_eos_ids(varied, engine, greedy_refs):
    """An instruct model's generation config lists its end-of-turn ids as EOS: vLLM stops at them,
    so the HF sampler must too, or the two would return different responses. Here "5" is made
    an EOS id: every reply ends at its first "5", kept."""
    model, tok = varied
    five = tok.convert_tokens_to_ids("5")
    model = copy.deepcopy(model)
    model.generation_config.eos_token_id = [five]
    vl = copy.copy(engine)
    vl.stop_strings = []
    vl.stop_ids = drgrpo.stop_token_ids(tok, model)  # the engine's own list adds the file's ids
    hf = drgrpo.HFSampler(model, tok, "none")
    assert five in hf.stop_ids and five in vl.stop_ids
    want = [ref[: ref.index(five) + 1] if five in ref else ref for ref in greedy_refs]
    assert any(five in ref for ref in greedy_refs)
    for sampler in (hf, vl):
        out = sampler.generate(PROMPTS, 1, 48, temperature=0)
        assert [g[0].token_ids for g in out] == want, sampler.name
