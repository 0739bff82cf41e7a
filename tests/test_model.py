"""What the GPT must get right, on tiny random models: shapes, causality, the hooks, the cache, learning."""

import math

import pytest
import torch

from model import GPT, GPTConfig, configure_optimizers, estimate_mfu


def tiny(**overrides):
    torch.manual_seed(0)
    config = dict(block_size=16, vocab_size=37, n_layer=3, n_head=2, n_embd=16, dropout=0.0, bias=True)
    return GPT(GPTConfig(**{**config, **overrides}))


def test_output_shapes_and_loss_at_init():
    model = tiny()
    idx, targets = torch.randint(0, 37, (2, 16)), torch.randint(0, 37, (2, 16))
    logits, loss = model(idx, targets)
    assert logits.shape == (2, 16, 37)
    # With std-0.02 weights the predictions start near uniform, so the loss starts near log(vocab).
    assert abs(loss.item() - math.log(37)) < 0.1


def test_changing_a_future_token_leaves_earlier_logits_unchanged():
    model = tiny()
    idx = torch.randint(0, 37, (1, 16))
    changed = idx.clone()
    changed[0, 10] = (idx[0, 10] + 1) % 37
    before, after = model(idx)[0], model(changed)[0]
    assert torch.equal(before[0, :10], after[0, :10])
    assert not torch.allclose(before[0, 10:], after[0, 10:])


def test_fused_and_readable_attention_agree():
    fused, readable = tiny(flash=True), tiny(flash=False)
    idx = torch.randint(0, 37, (2, 16))
    torch.testing.assert_close(fused(idx)[0], readable(idx)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("flash", [True, False])
def test_greedy_generation_with_cache_equals_without(flash):
    model = tiny(flash=flash).eval()
    prompt = torch.randint(0, 37, (2, 5))
    # 30 new tokens run past block_size 16, so the sliding window is covered too.
    cached = model.generate(prompt, 30, temperature=0, use_cache=True)
    uncached = model.generate(prompt, 30, temperature=0, use_cache=False)
    assert cached.shape == (2, 35)
    assert torch.equal(cached, uncached)


def test_body_returns_every_block_and_head_gives_the_forward_logits():
    model = tiny()
    idx = torch.randint(0, 37, (2, 8))
    hidden = model.body(idx)
    assert len(hidden) == 3 and all(h.shape == (2, 8, 16) for h in hidden)
    assert torch.equal(model.head(hidden[-1]), model(idx)[0])


def test_attn_add_enters_only_the_layers_it_names():
    model = tiny()
    idx = torch.randint(0, 37, (2, 8))
    plain = model.body(idx)
    zeros = model.body(idx, attn_add=[None, torch.zeros(16), None])
    assert all(torch.equal(a, b) for a, b in zip(plain, zeros))
    added = model.body(idx, attn_add=[None, torch.ones(2, 8, 16), None])
    assert torch.equal(added[0], plain[0])  # layer 0 runs before the addition
    assert not torch.allclose(added[1], plain[1])


def test_weights_are_tied_and_residual_projections_scaled():
    model = tiny(n_layer=8, n_embd=64, n_head=4)
    assert model.lm_head.weight is model.transformer.wte.weight
    std = model.transformer.h[0].attn.c_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(2 * 8)) < 0.001
    assert abs(model.transformer.h[0].attn.c_attn.weight.std().item() - 0.02) < 0.001


def test_a_tiny_model_overfits_one_batch():
    model = tiny(dropout=0.0)
    idx = torch.randint(0, 37, (4, 16))
    optimizer = configure_optimizers(model, 0.0, 3e-3, (0.9, 0.95), "cpu")
    for _ in range(150):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1


def test_optimizer_decays_matrices_only_and_skips_frozen_parameters():
    model = tiny()
    model.transformer.h[0].requires_grad_(False)
    optimizer = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.95), "cpu")
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.dim() == 1 for p in plain["params"])
    optimised = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in optimised for p in model.transformer.h[0].parameters())
    assert len(optimised) == sum(1 for p in model.parameters() if p.requires_grad)


def test_config_rejects_impossible_shapes():
    with pytest.raises(ValueError, match="divisible by n_head"):
        GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="dropout"):
        GPTConfig(dropout=1.5)


def test_mfu_is_reported_on_known_gpus_only():
    model = tiny()
    assert estimate_mfu(model, 1e6, "cpu") is None
    mfu = estimate_mfu(model, 1e6, "NVIDIA H100 80GB HBM3")
    assert mfu == pytest.approx(model.flops_per_token() * 1e6 / 989e12)


def test_the_optimizer_is_adamw_to_float_rounding():
    """configure_optimizers' update (the fused kernel on the CPU) against PyTorch's per-parameter AdamW loop, given
    the same gradients (through a model, float rounding would grow with every step's forward)."""
    model, reference = tiny(), tiny()
    optimizer = configure_optimizers(model, 0.1, 1e-2, (0.9, 0.95), "cpu")
    decayed = [p for p in reference.parameters() if p.dim() >= 2]
    others = [p for p in reference.parameters() if p.dim() < 2]
    reference_optimizer = torch.optim.AdamW([{"params": decayed, "weight_decay": 0.1},
                                             {"params": others, "weight_decay": 0.0}],
                                            lr=1e-2, betas=(0.9, 0.95), foreach=False)
    for _ in range(20):
        for p, q in zip(model.parameters(), reference.parameters()):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        optimizer.step()
        reference_optimizer.step()
    assert optimizer.defaults["fused"]
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
