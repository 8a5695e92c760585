"""The update's log-probs are the model's own: token_logprobs (section 7) runs the backbone and the
LM head itself, so for every model `--model` accepts it must equal log_softmax(model(ids).logits
/ T) at the response tokens. Architectures whose forward changes the logits after the head
(Granite's logits_scaling, Gemma2's final soft-capping, Cohere's logit_scale) are refused at
start-up in one line, before anything slow. Each architecture is built here from a tiny config,
with an init scale that gives logits of a trained model's size."""

import pytest
import torch
from conftest import arith
from transformers import AutoConfig, AutoModelForCausalLM

import drgrpo

TINY = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=64,
    initializer_range=0.2,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)
ACCEPTED = {"qwen2": {}, "llama": {}, "mistral": {}, "olmo2": {}, "gpt2": dict(n_layer=2, n_head=2)}
REFUSED = {
    "granite": dict(logits_scaling=8.0),
    "gemma2": dict(final_logit_softcapping=2.0),
    "cohere": dict(logit_scale=0.5),
}


def build(arch, vocab_size=64):
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        arch, vocab_size=vocab_size, **TINY, **{**ACCEPTED, **REFUSED}[arch]
    )
    return AutoModelForCausalLM.from_config(config).float().eval()


def batch():
    """Two responses of different lengths after prompts of different lengths: padding in between."""
    samples = [
        drgrpo.Sample([3, 4, 5], drgrpo.Completion([6, 7, 8, 9, 10, 11], "", False), 0.0, 1.0),
        drgrpo.Sample([12], drgrpo.Completion([13, 14, 15], "", False), 0.0, -1.0),
    ]
    return drgrpo.collate(samples, 0, "cpu")


def models_own(model, ids, temperature):
    """log_softmax(model(ids).logits / T) of each next token: what the model's forward says."""
    with torch.no_grad():
        logits = model(ids).logits[:, :-1].float() / temperature
    return logits.log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]


@pytest.mark.parametrize("arch", ACCEPTED)
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_token_logprobs_are_the_models_own_for_accepted_models(arch, temperature):
    model = build(arch)
    ids, mask, where = inputs = batch()
    want = models_own(model, ids, temperature)[mask.bool()]
    for fused_head in (True, False):
        with torch.no_grad():
            logp, _ = drgrpo.token_logprobs(model, inputs, temperature, fused_head=fused_head)
        assert torch.allclose(logp[mask.bool()], want, atol=1e-5), (arch, fused_head)
    assert (logp[~mask.bool()] == 0).all()
    assert want.std() > 0.5  # logits of a trained model's size, not a near-uniform softmax
    drgrpo.check_head(model, drgrpo.Config(model=arch, temperature=temperature))  # accepted


@pytest.mark.parametrize("arch", REFUSED)
def test_models_that_change_their_logits_after_the_head_are_refused(arch, tmp_path, capsys):
    """Their log-probs would be wrong by nats (printed): `train` stops in one line, exit 2,
    naming the architecture, right after the model loads and before any sampler starts."""
    model = build(arch)
    ids, mask, _ = inputs = batch()
    with torch.no_grad():
        logp, _ = drgrpo.token_logprobs(model, inputs)
    off = (logp - models_own(model, ids, 1.0))[mask.bool()].abs().max().item()
    with capsys.disabled():
        print(f"\n{arch}: section 7's log-probs are up to {off:.2f} nats from the model's own")
    assert off > 0.5
    tok = arith.build_tokenizer(["Pick 1 or 2! The answer is \\boxed{1}."])
    model = build(arch, vocab_size=len(tok))
    path = drgrpo.save_checkpoint(model, tok, str(tmp_path / arch))
    capsys.readouterr()  # the save's progress bar
    flags = ["--model", path, "--train_data", "data/arith/train.jsonl", "--sampler", "vllm"]
    with pytest.raises(SystemExit) as stop:
        drgrpo.main(["train", *flags, "--out_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    name = type(model).__name__
    assert stop.value.code == 2 and len(err) == 1, err
    assert err[0].startswith(f"drgrpo: error: --model {path}: {name} changes its logits after")
    assert err[0].endswith("not supported")
