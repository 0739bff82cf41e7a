"""Tests of the mixture-of-depths ensemble (mod.py) and its tuning modes, on tiny models and random tokens."""

import random

import pytest
import torch
from torch.nn import functional as F

import mod
import train
from configurator import ConfigError
from data.write import write_dataset
from lm import LanguageModel, load_language_model
from model import GPT, GPTConfig, configure_optimizers
from training import checkpoint as ckpt, settings_checks
from training.lora import merge_lora
from training.plot import read_log

V, C, L, B, T = 40, 16, 4, 3, 10
DEFAULTS = train.settings_from([train.PLAIN_CONFIG])


def make_lm(seed=0, bias=False, **settings):
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(n_layer=L, n_head=2, n_embd=C, block_size=16, vocab_size=V, bias=bias))
    return LanguageModel.from_settings(gpt, {**DEFAULTS, **settings})


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(V, (B, T), generator=g), torch.randint(V, (B, T), generator=g)


def randomize_router(lm, seed=2):
    """A trained-looking router, so that routing is far from uniform."""
    torch.manual_seed(seed)
    with torch.no_grad():
        lm.mod.router.weight.normal_(0, 1.0)
        for norm in lm.mod.norms:
            norm.weight.mul_(torch.rand_like(norm.weight) + 0.5)


def test_k1_is_exactly_the_plain_model():
    x, y = batch()
    plain = make_lm(mod_k=0)
    k1 = make_lm(mod_k=1)
    assert k1.mod is None
    logits, loss = plain.gpt(x, y)
    assert torch.equal(k1(x, y, {})[0], loss)
    assert torch.equal(k1.gpt(x)[0], logits)
    assert torch.equal(k1.generate(x[:1, :3], 5, temperature=0), plain.generate(x[:1, :3], 5, temperature=0))


def test_mixed_logits_from_one_head_call_equal_the_mixture_of_layer_logits():
    lm = make_lm(mod_k=3).double()
    randomize_router(lm)
    x, _ = batch()
    hidden = lm.gpt.body(x)
    logits, weights, normed = lm.mod(hidden, lm.gpt)
    per_layer = sum(weights[..., j, None] * lm.gpt.lm_head(n) for j, n in enumerate(normed))
    assert torch.allclose(logits, per_layer, atol=1e-10)
    assert torch.allclose(normed[-1], lm.gpt.transformer.ln_f(hidden[-1]))  # the final layer keeps ln_f
    assert not torch.allclose(logits, lm.gpt.head(hidden[-1]), atol=1e-3)  # the other layers do take part


def test_routing_weights_are_a_distribution_per_token():
    lm = make_lm(mod_k=3)
    x, _ = batch()
    _, weights, _ = lm.mod(lm.gpt.body(x), lm.gpt)
    assert torch.allclose(weights, torch.full((B, T, 3), 1 / 3))  # zero-initialised router: uniform at the start
    randomize_router(lm)
    _, weights, _ = lm.mod(lm.gpt.body(x), lm.gpt)
    assert weights.shape == (B, T, 3) and (weights > 0).all()
    assert torch.allclose(weights.sum(-1), torch.ones(B, T))
    assert weights.std(dim=(0, 1)).min() > 1e-3  # per token, not one global mixture


@pytest.mark.parametrize("bias", [False, True])
def test_a_frozen_base_trains_only_router_and_norms(bias):
    k = 3
    lm = make_lm(bias=bias, mod_k=k, base="frozen")
    trainable = sum(p.numel() for p in lm.parameters() if p.requires_grad)
    norm_params = C * (2 if bias else 1)  # LayerNorm gain (and bias), like ln_f
    assert trainable == (k - 1) * norm_params + (C * k + k)  # norms + router weight and bias
    before = {name: p.detach().clone() for name, p in lm.named_parameters()}
    optimizer = configure_optimizers(lm, 0.1, 1e-2, (0.9, 0.99), "cpu")
    x, y = batch()
    lm(x, y, {})[0].backward()
    optimizer.step()
    for name, p in lm.named_parameters():
        changed = not torch.equal(before[name], p)
        assert changed == name.startswith(("mod.router", "mod.norms")), name


def test_lora_starts_at_the_base_model_and_counts_its_parameters():
    x, y = batch()
    plain = make_lm(mod_k=0)
    rank = 2
    lora = make_lm(mod_k=0, base="lora", lora_rank=rank)
    assert torch.equal(lora(x, y, {})[0], plain(x, y, {})[0])  # B is zero: step 0 is the base
    per_block = rank * ((C + 3 * C) + (C + C) + (C + 4 * C) + (4 * C + C))  # c_attn, attn.c_proj, c_fc, c_proj
    assert sum(p.numel() for p in lora.parameters() if p.requires_grad) == L * per_block
    lora(x, y, {})[0].backward()
    assert all(p.grad is None for p in lora.gpt.parameters())
    assert all(b.grad.abs().sum() > 0 for b in lora.lora.B.values())  # every adapter is on the path

    both = make_lm(mod_k=3, base="lora", lora_rank=rank)
    assert sum(p.numel() for p in both.parameters() if p.requires_grad) == L * per_block + 2 * C + 3 * C + 3


def test_lora_targets_choose_the_adapted_linears_by_the_end_of_their_names():
    x, y = batch()
    rank = 2
    one = make_lm(mod_k=0, base="lora", lora_rank=rank, lora_targets="h.1.attn.c_proj")
    assert sum(p.numel() for p in one.parameters() if p.requires_grad) == rank * (C + C)
    one(x, y, {})[0].backward()
    assert list(one.lora.B) == ["h1_attn_c_proj"] and one.lora.B["h1_attn_c_proj"].grad.abs().sum() > 0
    every_block = make_lm(mod_k=0, base="lora", lora_rank=rank, lora_targets="attn.c_proj, mlp.c_fc")
    assert sum(p.numel() for p in every_block.parameters() if p.requires_grad) == L * rank * ((C + C) + (C + 4 * C))
    # the default adapts every linear of every block in the order it always did, so a seed draws the same adapters
    default = make_lm(mod_k=0, base="lora")
    listed = make_lm(mod_k=0, base="lora", lora_targets="mlp.c_proj,mlp.c_fc,attn.c_proj,attn.c_attn")
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), listed.state_dict().values()))
    for bad in ("h.9.attn.c_proj", "attn.c_attn,ln_1"):
        with pytest.raises(ConfigError, match="lora_targets names no linear"):
            make_lm(mod_k=0, base="lora", lora_targets=bad)


def test_train_ln_f_lets_only_the_final_norm_train_on_a_frozen_base():
    x, y = batch()
    norm_alone = make_lm(mod_k=0, base="frozen", train_ln_f=True)
    trainable = [name for name, p in norm_alone.named_parameters() if p.requires_grad]
    assert trainable == ["gpt.transformer.ln_f.weight"]
    norm_alone(x, y, {})[0].backward()
    assert norm_alone.gpt.transformer.ln_f.weight.grad.abs().sum() > 0
    with_ensemble = make_lm(mod_k=3, base="frozen", train_ln_f=True)  # every late layer's norm trains, ln_f too
    assert sum(p.numel() for p in with_ensemble.parameters() if p.requires_grad) == C + 2 * C + 3 * C + 3
    assert not make_lm(mod_k=3, base="frozen").gpt.transformer.ln_f.weight.requires_grad


def test_distillation_is_zero_when_the_late_layers_agree():
    lm = make_lm(mod_k=3, mod_router_entropy=0.0)
    x, y = batch()
    hidden = lm.gpt.body(x)
    agreeing = hidden[:-3] + [hidden[-1]] * 3  # same state, and every norm starts as a copy of ln_f
    for training in (True, False):
        lm.train(training)
        _, weights, normed = lm.mod(agreeing, lm.gpt)
        distill, stats = lm.mod.aux_loss(lm.gpt, agreeing, normed, weights, y)
        assert distill == 0 and stats["distill"] == 0
        _, weights, normed = lm.mod(hidden, lm.gpt)
        distill, _ = lm.mod.aux_loss(lm.gpt, hidden, normed, weights, y)
        assert distill > 1e-6


def test_distillation_is_the_kl_from_the_detached_final_layer():
    lm = make_lm(mod_k=2, mod_lambda=1.0, mod_router_entropy=0.0)
    x, y = batch()
    hidden = [h.detach() for h in lm.gpt.body(x)]  # so that gradients can only reach the norms and the head
    _, weights, normed = lm.mod(hidden, lm.gpt)
    student, teacher = (F.log_softmax(lm.gpt.lm_head(n), -1) for n in normed)
    expected = (teacher.exp() * (teacher - student)).sum(-1).mean()  # KL(P_final || P_student)
    lm.mod.distill_frac = 1.0
    distill, _ = lm.mod.aux_loss(lm.gpt, hidden, normed, weights.detach(), y)  # the router's input is ln_f's
    assert torch.allclose(distill, expected, atol=1e-6)
    distill.backward()
    assert lm.gpt.transformer.ln_f.weight.grad is None  # the teacher is not pulled towards the student
    assert lm.gpt.lm_head.weight.grad is None  # nor is the shared head, which makes the teacher too
    assert lm.mod.norms[0].weight.grad.abs().sum() > 0


def test_the_routing_entropy_is_subtracted_from_the_loss():
    lm = make_lm(mod_k=3, mod_router_entropy=0.1)
    randomize_router(lm)
    x, y = batch()
    hidden = lm.gpt.body(x)
    _, weights, normed = lm.mod(hidden, lm.gpt)
    loss, stats = lm.mod.eval().aux_loss(lm.gpt, hidden, normed, weights, y)
    entropy = -(weights * weights.log()).sum(-1).mean()
    assert torch.allclose(loss, lm.mod.distill_lambda * stats["distill"] - 0.1 * entropy)


def test_evaluation_logs_every_late_layer():
    lm = make_lm(mod_k=3).eval()
    x, y = batch()
    with torch.no_grad():
        _, stats = lm(x, y, {})
        hidden = lm.gpt.body(x)
    assert {f"layer{j}_ce" for j in (1, 2, 3)} <= stats.keys() and {"route1", "route2", "route3"} <= stats.keys()
    assert torch.allclose(stats["layer3_ce"], F.cross_entropy(lm.gpt.head(hidden[-1]).flatten(0, 1), y.flatten()))
    # untrained norms are copies of ln_f, so through them a layer reads as the plain logit lens does
    assert torch.allclose(stats["layer1_ce"], stats["layer1_lens"])
    assert torch.allclose(stats["route1"] + stats["route2"] + stats["route3"], torch.tensor(1.0))


def test_the_ceiling_is_the_per_token_best_late_layer_chosen_in_hindsight():
    lm = make_lm(mod_k=3).eval()
    for norm in lm.mod.norms:  # layers that differ, so that each wins on some tokens
        torch.nn.init.normal_(norm.weight, 1.0, 0.5)
    x, y = batch()
    with torch.no_grad():
        _, stats = lm(x, y, {})
        _, _, normed = lm.mod(lm.gpt.body(x), lm.gpt)
        per_layer = torch.stack([F.cross_entropy(lm.gpt.lm_head(n).flatten(0, 1), y.flatten(), reduction="none")
                                 for n in normed])
    assert torch.allclose(stats["best_layer_ce"], per_layer.min(0).values.mean())
    assert stats["best_layer_ce"] < min(stats[f"layer{j}_ce"] for j in (1, 2, 3))  # below every layer alone


def test_generation_decodes_the_mixed_logits_with_the_kv_cache():
    lm = make_lm(mod_k=3).eval()
    randomize_router(lm)
    prompt = torch.randint(V, (2, 4), generator=torch.Generator().manual_seed(3))
    cached = lm.generate(prompt, 8, temperature=0)
    assert torch.equal(cached, lm.generate(prompt, 8, temperature=0, use_cache=False))
    with torch.no_grad():
        for t in range(4, 12):  # every sampled token is the argmax of the mixed logits
            logits = lm.mod(lm.gpt.body(cached[:, :t]), lm.gpt)[0]
            assert torch.equal(cached[:, t], logits[:, -1].argmax(-1))


def test_overfits_one_batch_with_the_ensemble_on():
    lm = make_lm(mod_k=3)
    optimizer = configure_optimizers(lm, 0.0, 3e-3, (0.9, 0.99), "cpu")
    x, y = batch()
    losses = []
    for _ in range(60):
        loss, stats = lm(x, y, {})
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(stats["ce"].item())
    assert losses[-1] < 0.5 * losses[0]


def test_settings_reject_impossible_ensembles():
    for bad in ({"base": "frozen", "mod_k": 1, "init_from": "resume"}, {"mod_k": L + 1}, {"mod_k": -1},
                {"base": "frozen", "mod_k": 3}, {"base": "adapter"}, {"base": "lora", "lora_rank": 0},
                {"mod_distill_frac": 0.0}, {"mod_router_entropy": -0.1}, {"train_ln_f": True},
                {"base": "frozen", "mod_k": 0, "init_from": "resume"}):
        settings = {**DEFAULTS, "n_layer": L, **bad}
        with pytest.raises(ConfigError):
            settings_checks.check(settings)
    settings_checks.check({**DEFAULTS, "n_layer": L, "mod_k": 3})
    settings_checks.check({**DEFAULTS, "n_layer": L, "base": "frozen", "train_ln_f": True, "init_from": "resume"})


def tiny_run(tmp_path, n_layer):
    """train.py arguments for a 4-step run of a tiny plain GPT on a character corpus written to tmp_path."""
    corpus = tmp_path / "corpus"
    text = "the quick brown fox jumps over the lazy dog. " * 100
    write_dataset(corpus, {"train": [text[:3500]], "val": [text[3500:]]}, "char", "tiny", "made by the test")
    return [train.PLAIN_CONFIG, f"--dataset={corpus}", f"--n_layer={n_layer}", "--n_head=2", "--n_embd=16",
            "--block_size=16", "--batch_size=4", "--eval_iters=2", "--eval_interval=4", "--max_iters=4",
            "--sample_tokens=0", "--compile=False", "--device=cpu"]


def test_tuning_a_checkpoint_with_a_frozen_base_through_train_py(tmp_path):
    tiny = tiny_run(tmp_path, n_layer=3)
    train.main([*tiny, f"--out_dir={tmp_path / 'pre'}"])
    tune = [*tiny, f"--out_dir={tmp_path / 'tune'}", f"--init_from={tmp_path / 'pre' / 'ckpt.pt'}", "--mod_k=2",
            "--base=frozen"]
    train.main(tune)
    last = read_log(tmp_path / "tune")[-1]
    assert last["trainable_params"] == 16 + (16 * 2 + 2)  # one norm (no bias) + the router
    assert {"val_layer1_ce", "val_layer2_ce", "val_route1", "val_route2", "val_distill"} <= last.keys()
    pretrained, tuned = (ckpt.load(str(tmp_path / d / "ckpt.pt")) for d in ("pre", "tune"))
    assert all(torch.equal(v, tuned["model"][k]) for k, v in pretrained["model"].items())  # the base is frozen
    model = load_language_model(tuned, "cpu")  # what sample.py decodes from: the mixed logits
    assert model.mod is not None and model.generate(torch.zeros(1, 1, dtype=torch.long), 4).shape == (1, 5)
    with pytest.raises(ConfigError, match="mod_k: checkpoint 2, now 3"):
        train.main([*tune[:-2], "--init_from=resume", "--mod_k=3", "--base=frozen", "--max_iters=8"])
    with pytest.raises(ConfigError, match=r"between 0 and n_layer \(3\).*the checkpoint's"):  # n_layer=4 is ignored
        train.main([*tune[:-2], "--n_layer=4", "--mod_k=4", "--base=frozen", "--overwrite"])


def test_merged_lora_weights_are_the_tuned_model():
    lm = make_lm(mod_k=0, base="lora", lora_rank=4)
    with torch.no_grad():
        for b in lm.lora.B.values():
            b.normal_()  # a tuned run's adapters, no longer zero
    state = lm.state_dict()
    merged = GPT(lm.gpt.config)
    merged.load_state_dict(merge_lora(ckpt.strip_prefix(state, "gpt."), ckpt.strip_prefix(state, "lora."),
                                      lm.lora.scale))
    x, y = batch()
    with_adapters, base = lm(x, y, {})[0], make_lm(mod_k=0)(x, y, {})[0]
    assert not torch.allclose(with_adapters, base, atol=1e-2)  # the adapters matter
    assert torch.allclose(merged(x, y)[1], with_adapters, atol=1e-5)


def test_a_run_from_a_lora_checkpoint_starts_where_the_lora_run_ended(tmp_path):
    tiny = tiny_run(tmp_path, n_layer=2)
    train.main([*tiny, f"--out_dir={tmp_path / 'pre'}"])
    train.main([*tiny, f"--out_dir={tmp_path / 'lora'}", f"--init_from={tmp_path / 'pre' / 'ckpt.pt'}",
                "--base=lora", "--learning_rate=0.05"])
    train.main([*tiny, f"--out_dir={tmp_path / 'full'}", f"--init_from={tmp_path / 'lora' / 'ckpt.pt'}"])
    pre, lora, full = (read_log(tmp_path / d) for d in ("pre", "lora", "full"))
    assert abs(lora[-1]["val_loss"] - pre[-1]["val_loss"]) > 1e-3  # the adapters learned something
    assert full[0]["val_loss"] == pytest.approx(lora[-1]["val_loss"], abs=1e-5)


def collapse_run(tmp_path):
    """train.py arguments for 300 steps of a 2-layer GPT with the ensemble of both layers, on made-up words, at a
    learning rate high enough for the router to collapse within those steps without the entropy term."""
    rng = random.Random(0)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "runs", "far", "away", "cat",
             "sat", "on", "mat"]
    text = " ".join(rng.choice(words) for _ in range(3000))
    write_dataset(tmp_path / "words", {"train": [text[:12000]], "val": [text[12000:]]}, "char", "words", "the test")
    return [train.PLAIN_CONFIG, f"--dataset={tmp_path / 'words'}", "--n_layer=2", "--n_head=2", "--n_embd=16",
            "--block_size=16", "--batch_size=8", "--eval_iters=2", "--eval_interval=300", "--max_iters=300",
            "--sample_tokens=0", "--compile=False", "--learning_rate=0.015", "--warmup_iters=0", "--mod_k=2",
            "--device=cpu"]


def test_the_router_collapses_and_says_so_without_the_entropy_term_and_does_not_with_it(tmp_path):
    run = collapse_run(tmp_path)
    train.main([*run, f"--out_dir={tmp_path / 'bare'}", "--mod_router_entropy=0"])
    bare = read_log(tmp_path / "bare")[-1]
    assert bare["val_route0"] >= mod.COLLAPSED and "collapsed onto layer 0" in bare["warnings"][0]
    train.main([*run, f"--out_dir={tmp_path / 'default'}"])
    default = read_log(tmp_path / "default")[-1]
    assert max(default["val_route0"], default["val_route1"]) < 0.8 and "warnings" not in default
