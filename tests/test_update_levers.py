"""The GPU levers of the update change no number, checked on
the CPU against the plain path:

- no attention mask (right padding, causal attention): log-probs, entropy, loss and gradients equal
  to an unpadded forward of each response alone, for the three aggregations;
- micro-batches of any size: the same loss and gradients;
- the bf16 working copy over fp32 master weights: gradients in fp32, equal to the fp32 path to
  bf16's precision, and the copy refreshed from the master after the step;
- no host sync inside the micro-batch loop: one `.item()` per optimizer
  step, however many micro-batches;
- the fused LM head (FusedLMHead): log-probs, entropy and gradients equal to
  autograd through a full log-softmax.
"""

import copy

import pytest
import torch
from test_update_speed import flat_grads, random_qwen, rollout

import drgrpo
from drgrpo import Config


def plain_logprobs(model, batch):
    """The reference: each [prompt + response] alone (no padding at all), the full log-softmax."""
    logp, entropy = [], []
    for s in batch:
        ids = torch.tensor([s.prompt_ids + s.completion.token_ids])
        logits = model(input_ids=ids).logits[0, :-1].float()
        lp = torch.log_softmax(logits, -1)
        # position t's logits predict token t + 1: the response's tokens from the prompt's last
        a = len(s.prompt_ids) - 1
        b = a + len(s.completion.token_ids)
        logp.append(lp[a:b].gather(1, ids[0, a + 1 : b + 1, None]).squeeze(1))
        entropy.append(-(lp[a:b].exp() * lp[a:b]).sum(-1))
    return logp, entropy


def cfg_for(loss_agg, **kw):
    return drgrpo.resolve(
        Config(
            loss_agg=loss_agg,
            train_batch_size=12,
            prompts_per_rollout=3,
            group_size=4,
            max_new_tokens=16,
            grad_clip=1e9,
            **{"micro_batch_size": 12, **kw},
        )
    )


def sgd_step(model, batch, cfg, work=None):
    """optimizer_step with SGD(lr=1): -> (stats, the gradient it applied)."""
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    stats = drgrpo.optimizer_step(
        model, torch.optim.SGD(model.parameters(), lr=1.0), batch, cfg, 0, work
    )
    return stats, before - torch.cat([p.detach().flatten() for p in model.parameters()])


def test_no_attention_mask_gives_the_unpadded_logprobs_and_entropy():
    model, batch = random_qwen(), rollout()
    ids, mask, where = drgrpo.collate(batch, 0, "cpu")
    assert (ids == 0).any()  # right padding is really there
    with torch.no_grad():
        # section 7's plain computation (the fused head is checked against it elsewhere)
        logp, entropy = drgrpo.token_logprobs(model, (ids, mask, where), fused_head=False)
        ref_logp, ref_entropy = plain_logprobs(model, batch)
    for i, s in enumerate(batch):
        a, b = drgrpo.span(s)
        assert torch.allclose(logp[i, a:b], ref_logp[i], atol=1e-5)
        assert torch.allclose(entropy[i, a:b], ref_entropy[i], atol=1e-5)
    assert (logp * (1 - mask) == 0).all()  # nothing outside the responses


@pytest.mark.parametrize("loss_agg", drgrpo.LOSS_AGGS)
def test_update_equals_the_plain_unpadded_loss_and_gradient(loss_agg):
    model, batch = random_qwen(), rollout()
    cfg = cfg_for(loss_agg, micro_batch_size=4)
    ref = copy.deepcopy(model)
    logp, _ = plain_logprobs(ref, batch)
    T = max(len(lp) for lp in logp)

    def pad(xs):
        return torch.stack([torch.cat([x, x.new_zeros(T - len(x))]) for x in xs])

    lp, mask = pad(logp), pad([torch.ones(len(x)) for x in logp])
    adv = torch.tensor([s.advantage for s in batch]).unsqueeze(1)
    tok_loss, _ = drgrpo.ppo_token_loss(lp, lp.detach(), adv, 0.2, 0.2)
    ref_loss = drgrpo.aggregate_loss(
        tok_loss, mask, loss_agg, len(batch), int(mask.sum()), cfg.loss_norm_const
    )
    ref_loss.backward()
    stats, grad = sgd_step(model, batch, cfg)
    assert stats["loss"] == pytest.approx(ref_loss.item(), rel=1e-5, abs=1e-8)
    assert torch.allclose(grad, flat_grads(ref), atol=1e-7, rtol=1e-4)
    assert flat_grads(ref).abs().sum() > 0


def test_pretraining_token_budget_fits_the_budget_and_keeps_every_sample():
    """data/arith/prepare.py's micro-batches by a token budget (verl's dynamic batch size)."""
    from conftest import arith

    batch = sorted(rollout(), key=lambda s: drgrpo.span(s)[1])
    mbs = arith.token_budget_batches(batch, 40)
    assert [s for mb in mbs for s in mb] == batch  # all of them, in order
    # the budget splits, and packs several where they fit
    assert len(mbs) > 1 and max(map(len, mbs)) > 1
    for mb in mbs:
        padded = len(mb) * max(drgrpo.span(s)[1] + 1 for s in mb)  # collate's [b, T]
        assert padded <= 40 or len(mb) == 1


@pytest.mark.parametrize("loss_agg", drgrpo.LOSS_AGGS)
def test_micro_batch_size_gives_the_same_loss_and_gradient(loss_agg):
    model, batch = random_qwen(), rollout()
    results = [
        sgd_step(copy.deepcopy(model), batch, cfg_for(loss_agg, **kw))
        for kw in ({"micro_batch_size": 12}, {"micro_batch_size": 1}, {"micro_batch_size": 4})
    ]
    for stats, grad in results[1:]:
        assert stats["loss"] == pytest.approx(results[0][0]["loss"], rel=1e-5, abs=1e-8)
        assert torch.allclose(grad, results[0][1], atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("loss_agg", drgrpo.LOSS_AGGS)
def test_fused_head_update_equals_the_plain_update(loss_agg):
    """--fused_head (the default) against section 7's plain log_softmax: the same loss, entropy
    and applied gradient for a whole optimizer step."""
    model, batch = random_qwen(), rollout()
    (plain, plain_grad), (fused, fused_grad) = [
        sgd_step(copy.deepcopy(model), batch, cfg_for(loss_agg, fused_head=f))
        for f in (False, True)
    ]
    assert plain_grad.abs().max() > 0 and plain["entropy"] > 0
    assert fused["loss"] == pytest.approx(plain["loss"], rel=1e-5, abs=1e-8)
    assert fused["entropy"] == pytest.approx(plain["entropy"], rel=1e-5)
    assert torch.allclose(fused_grad, plain_grad, atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("loss_agg", drgrpo.LOSS_AGGS)
def test_bf16_working_copy_matches_fp32_to_bf16_precision(loss_agg):
    model, batch = random_qwen(), rollout()
    # 3 micro-batches: gradients summed in the fp32 master
    cfg = cfg_for(loss_agg, micro_batch_size=4)
    fp32_stats, fp32_grad = sgd_step(copy.deepcopy(model), batch, cfg)
    master = copy.deepcopy(model)
    work = drgrpo.working_copy(master, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in work.parameters())
    assert all(b.dtype == torch.float32 for b in work.buffers())  # RoPE's frequencies keep fp32
    assert all(p.dtype == torch.float32 for p in master.parameters())
    stats, grad = sgd_step(master, batch, cfg, work)
    assert grad.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(grad, fp32_grad, dim=0)
    assert cos > 0.999 and (grad.norm() / fp32_grad.norm() - 1).abs() < 0.02
    assert stats["loss"] == pytest.approx(fp32_stats["loss"], rel=0.02, abs=1e-4)
    # refreshed after the step
    for p, w in zip(master.parameters(), work.parameters(), strict=True):
        assert torch.equal(w, p.to(torch.bfloat16))
    assert all(w.grad is None for w in work.parameters())


def test_working_copy_is_the_model_itself_in_fp32():
    model = random_qwen()
    assert drgrpo.working_copy(model, None) is model


def test_one_host_sync_per_optimizer_step_however_many_micro_batches(monkeypatch):
    calls = []
    real = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda t: calls.append(1) or real(t))
    model, batch = random_qwen(), rollout()
    counts = []
    for micro in (12, 1):
        calls.clear()
        drgrpo.optimizer_step(
            model,
            torch.optim.SGD(model.parameters(), lr=0.0),
            batch,
            cfg_for("seq_mean_token_sum_norm", micro_batch_size=micro, kl_beta=0.0),
            0,
        )
        counts.append(len(calls))
    assert counts == [1, 1]  # the gradient norm, after the loop


def test_pretraining_micro_batches_give_the_full_batch_loss_and_gradient():
    """data/arith/prepare.py pre-trains the demo's model in length-sorted micro-batches of a
    token budget: the loss and gradient must be those of the whole batch in one forward (only
    the summation order differs)."""
    from conftest import arith

    model, batch = random_qwen(), rollout()
    by_length = sorted(batch, key=lambda s: drgrpo.span(s)[1])
    assert len(arith.token_budget_batches(by_length, 40)) >= 4  # really split
    results = []
    for budget in (10**9, 40):
        model.zero_grad(set_to_none=True)
        results.append((arith.pretrain_backward(model, batch, 0, budget), flat_grads(model)))
    (loss, grad), (mb_loss, mb_grad) = results
    # the plain next-token loss, by hand, for the value
    ids, mask, _ = drgrpo.collate(batch, 0, "cpu")
    logits = model(input_ids=ids).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    assert torch.allclose(loss, (nll * mask).sum() / mask.sum(), atol=1e-6)
    assert torch.allclose(mb_loss, loss, atol=1e-6)
    assert grad.abs().max() > 0 and torch.allclose(mb_grad, grad, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_head_equals_autograd_through_the_full_log_softmax(dtype):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(10, 8, generator=gen).to(dtype).requires_grad_()
    weight = torch.randn(50, 8, generator=gen).to(dtype).requires_grad_()
    targets, g = torch.randint(50, (10,), generator=gen), torch.randn(10, generator=gen)
    logp, entropy = drgrpo.FusedLMHead.apply(hidden, weight, targets, 3)  # 4 chunks of <= 3 rows
    grads = torch.autograd.grad((logp * g).sum(), (hidden, weight))
    # what autograd does without the fused head
    ref = torch.log_softmax((hidden @ weight.T).float(), -1)
    ref_logp, ref_entropy = ref.gather(1, targets[:, None])[:, 0], -(ref.exp() * ref).sum(-1)
    ref_grads = torch.autograd.grad((ref_logp * g).sum(), (hidden, weight))
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    assert torch.allclose(logp, ref_logp, **tol) and torch.allclose(
        entropy, ref_entropy.detach(), **tol
    )
    for a, b in zip(grads, ref_grads, strict=True):
        assert a.dtype == dtype and torch.allclose(a.float(), b.float(), **tol)
    assert not entropy.requires_grad  # a diagnostic: no gradient from it
