"""Tests of planner.py: planner, conditioning and generation, on tiny corpora made here (the sentences and labels
they read: test_sentences.py)."""

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configurator import ConfigError
from data.dataset import load_docs, load_meta, load_texts, load_tokens
from data.sentences import PlanData, sentence_breaks, sentence_starts
from data.write import write_dataset
from lm import LanguageModel
from model import GPT, GPTConfig
from planner import SHUFFLED, Planner, health_warning, initialise_plan
from training import run_report
from training.plot import read_log
from training.replanner import Replanner

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
    model = LanguageModel.from_settings(gpt, settings(mode, **overrides))
    if model.plan is not None:
        model.plan.initialise(data.centroids, data.labels["train"])
    return model


def batch(data, path, ix, block_size=32):
    tokens = load_tokens(path, "train").astype(np.int64)
    x = torch.from_numpy(np.stack([tokens[i:i + block_size] for i in ix]))
    y = torch.from_numpy(np.stack([tokens[i + 1:i + 1 + block_size] for i in ix]))
    return x, y, data.batch("train", torch.tensor(ix), block_size, M)


def test_bad_input_gets_a_clear_error(data, tmp_path):
    plan_data, dataset = data
    with pytest.raises(ConfigError, match="larger than the .* train sentences"):
        PlanData(dataset, 10_000, "lsa", seed=0)
    write_dataset(tmp_path, {"train": fake_corpus(3), "val": fake_corpus(1)}, "char", "tiny", source="test")
    (tmp_path / "train_texts.txt").unlink()
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
    expected = torch.from_numpy(np.stack([sentence_of_char[i + 1:i + 33] for i in ix]))
    context, pos = plan_data.context("train", expected, M)  # the planner's input for the sentence of token t+1
    index = extra["plan_index"]
    assert torch.equal(extra["plan_context"][index], context) and torch.equal(extra["plan_pos"][index], pos)
    assert torch.equal(extra["plan_label"][index], plan_data.labels["train"][expected])
    row, t = np.argwhere(np.diff(expected.numpy(), axis=1))[0] + (0, 1)  # y[t] opens a sentence, x[t] ends one
    assert index[row, t] != index[row, t - 1]


def test_the_plan_s_gradient_is_the_same_every_time_on_two_threads(data):
    """Each position's plan vector is looked up from its sentence's; the gradient that flows back sums every
    position's into its sentence's, in a fixed order, so that two runs at several CPU threads stay identical."""
    plan = make_model("soft", data[0], 64).plan
    extra = {"plan_context": torch.randn(40, M, plan.codebooks[0].size(1)), "plan_pos": torch.randint(0, 9, (40,)),
             "plan_label": torch.randint(0, K, (40,)), "plan_index": torch.randint(0, 40, (32, 64))}
    upstream = torch.randn(32, 64, 32)  # 65,536 values: enough for PyTorch to split the summing across threads
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = set()
        for _ in range(20):
            plan.zero_grad()
            attn_add, _, _ = plan(extra)
            (attn_add[-1] * upstream).sum().backward()
            grads.add(plan.codebooks[-1].grad.numpy().tobytes())
    finally:
        torch.set_num_threads(threads)
    assert len(grads) == 1


def test_a_batch_lists_each_of_its_sentences_once(data):
    plan_data, path = data
    ix = [0, 10, 300]  # the first two windows overlap: their shared sentences are planned once
    extra = batch(plan_data, path, ix)[2]
    sentences = np.unique(np.stack([plan_data.token_sentence["train"][i + 1:i + 33] for i in ix]))
    assert len(extra["plan_label"]) == len(extra["plan_pos"]) == len(extra["plan_context"]) == len(sentences)
    assert torch.equal(extra["plan_index"].unique(), torch.arange(len(sentences)))  # every entry is used


def test_plan_of_sentence_i_ignores_sentence_i_and_later(data):
    plan_data, path = data
    model = make_model("soft", plan_data, load_meta(path)["vocab_size"]).eval()
    extra = plan_data.batch("train", torch.tensor([5]), 150, M)
    sentence = plan_data.token_sentence["train"][6:156]  # the sentences that positions 0..149 are planned by
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


def replan_token_by_token(replanner, tokens, prompt_length):
    """Feed a Replanner as GPT.generate does with the KV cache, a prompt then one token per call; the last call
    asks for every position. Returns the last conditioned layer's vectors (len(tokens), n_embd)."""
    for n in range(prompt_length, len(tokens) + 1):
        vectors = replanner(torch.tensor([tokens[:n]]), 0 if n == len(tokens) else n - 1)
    return vectors[-1][0]


def test_generation_replans_like_training_and_without_leaks(data):
    plan_data, path = data
    meta = load_meta(path)
    model = make_model("soft", plan_data, meta["vocab_size"]).eval()
    tokens = load_tokens(path, "train").astype(np.int64).tolist()
    x, y, extra = batch(plan_data, path, [0])
    trained = model.plan(extra)[0][-1][0]
    for prompt_length in (1, 17, 33):  # sentences finished while generating, or already in the prompt
        generated = replan_token_by_token(Replanner(model.plan, plan_data, meta), tokens[:33], prompt_length)
        assert torch.allclose(trained, generated[:32], atol=1e-5)
    # The plans of a prefix do not depend on what follows, and a finished sentence is re-planned at once.
    end = int(plan_data.sentences["train"]["sentence_span"][1, 1])
    prefix = tokens[:end]
    alone = replan_token_by_token(Replanner(model.plan, plan_data, meta), prefix, 1)
    for continuation in (tokens[end:end + 40], [meta["stoi"][" "]] + [meta["stoi"]["B"]] * 5):
        again = replan_token_by_token(Replanner(model.plan, plan_data, meta), prefix + continuation, 1)
        assert torch.allclose(again[:len(prefix)], alone)
    assert not torch.allclose(alone[-1], alone[-2])


class EveryTokenReplanner(Replanner):
    """The reference: at every token, split the whole text so far into documents and sentences again and plan
    every sentence (what Replanner did before it kept the finished sentences)."""

    def __call__(self, window, start):
        self.history = window.tolist() if self.rows is None else [h + [t] for h, t in zip(self.history,
                                                                                         window[:, -1].tolist())]
        self.rows = True
        first = len(self.history[0]) - window.size(1) + start
        return [None] * self.conditioner.first_layer + list(torch.stack(
            [self.whole_text_vectors(row)[first:] for row in self.history]).unbind(2))

    def whole_text_vectors(self, tokens):
        sentence_of, plans, doc_start = [], [], 0  # sentence of tokens 0..len (the last: the unwritten next one)
        for doc_end in [i for i, token in enumerate(tokens) if token == self.eot] + [len(tokens)]:
            doc = np.array(tokens[doc_start:doc_end], dtype=np.int64)
            starts = sentence_starts(doc, self.decode(doc), self.encode, self.token_nbytes) if len(doc) else [0]
            bounds = starts + [len(doc)]
            texts = [self.decode(doc[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
            ids = np.repeat(np.arange(len(starts)), np.diff(bounds)).tolist()
            is_open = doc_end == len(tokens)
            n = len(starts)
            if is_open and len(doc) and len(sentence_breaks(texts[-1] + " X")) > len(sentence_breaks(texts[-1])):
                n += 1
            embeddings = [self.embed(text) for text in texts[:n - 1]]
            sentence_of += [len(plans) + i for i in ids] + [len(plans) + n - 1]  # the EOT, or the next token
            plans += [self.plan(embeddings[:i]) for i in range(n)]
            doc_start = doc_end + 1
        return torch.cat(plans)[sentence_of[1:]]


@pytest.fixture(scope="module")
def gpt2_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_gpt2")
    write_dataset(path, {"train": fake_corpus(30), "val": fake_corpus(3, seed=1)}, "gpt2", "t", source="t")
    return PlanData(path, K, "lsa", seed=0), path


def test_generated_gpt2_text_is_planned_as_training_plans_it_across_documents(gpt2_data):
    # With BPE, the tokens of a text cut short need not be how the shorter text encodes on its own ("!\n\n" is one
    # token alone, two before a word): splitting the whole text again would then drop finished sentences until
    # the text goes on. Finished sentences stay finished, and the plans end as the training batch's.
    plan_data, path = gpt2_data
    meta = load_meta(path)
    model = make_model("soft", plan_data, meta["vocab_size"]).eval()
    tokens = load_tokens(path, "train").astype(np.int64).tolist()
    text = tokens[:tokens.index(meta["eot_token"]) + 50]  # a document, its EOT and the start of the next
    trained = model.plan(plan_data.batch("train", torch.tensor([0]), len(text) - 1, M))[0][-1][0]
    sentence = plan_data.token_sentence["train"]
    settled = int(np.flatnonzero(sentence == sentence[len(text) - 1])[0]) - 1  # the cut sentence may not split yet
    for prompt_length in (1, 20, len(text) - 30, len(text)):
        generated = replan_token_by_token(Replanner(model.plan, plan_data, meta), text, prompt_length)
        assert torch.allclose(trained[:settled], generated[:settled], atol=1e-5)


def test_replanning_at_sentence_ends_gives_the_tokens_of_replanning_at_every_token(data):
    plan_data, path = data
    meta = load_meta(path)
    model = make_model("soft", plan_data, meta["vocab_size"]).eval()
    tokens = load_tokens(path, "train").astype(np.int64).tolist()
    text = tokens[:150]
    kept, every = (replanner(model.plan, plan_data, meta) for replanner in (Replanner, EveryTokenReplanner))
    for n in range(10, len(text) + 1):  # the plans at every step of writing a text, then of the whole window
        window, start = torch.tensor([text[:n]]), n - 1 if n < len(text) else 0
        assert torch.equal(kept(window, start)[-1], every(window, start)[-1])
    prompt = torch.tensor([tokens[:20], tokens[100:120]])  # two rows, generating past block_size 32
    generated = []
    for replanner in (Replanner, EveryTokenReplanner):
        torch.manual_seed(0)
        generated.append(model.gpt.generate(prompt, 80, temperature=1.0, attn_add_fn=replanner(model.plan,
                                                                                               plan_data, meta)))
    assert torch.equal(*generated)


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
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.plan.codebooks)
    # a training step computes only the planner's statistic its loss needs; an evaluation reports them all
    assert set(stats) == {"ce", "plan_ce"}
    with torch.no_grad():
        _, stats = model.eval()(*batch(plan_data, path, [3, 50]))
    assert {"plan_acc", "plan_top5", "plan_ce", "plan_majority_acc", "plan_gain"} <= set(stats)


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
    mixed = soft.plan.plan_vectors(torch.log(one_hot + 1e-30), None, "soft")
    looked_up = hard.plan.plan_vectors(torch.log(one_hot + 1e-30), None, "hard")
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
    label = extra["plan_label"][extra["plan_index"]]
    assert torch.allclose(oracle.plan(extra)[0][-1], project(codebook[label]))
    assert oracle.plan(extra)[0][:oracle.plan.first_layer] == [None] * oracle.plan.first_layer


def test_plan_gain_is_what_the_lm_loses_when_each_sentence_gets_another_sentences_plan(data):
    plan_data, path = data
    model = make_model("soft", plan_data, load_meta(path)["vocab_size"]).eval()
    x, y, extra = batch(plan_data, path, [3, 50])
    n = len(extra["plan_label"])
    own, shuffled = model.plan(extra)[0][-1], model.plan(extra, SHUFFLED)[0][-1]
    vectors = own.new_zeros(n, own.size(-1)).index_copy_(0, extra["plan_index"].flatten(), own.flatten(0, 1))
    assert torch.equal(shuffled, vectors[(extra["plan_index"] + n // 2) % n])  # another sentence's plan
    with torch.no_grad():
        _, stats = model(x, y, extra)
        lost = torch.nn.functional.cross_entropy(model.logits(x, extra, SHUFFLED)[0].flatten(0, 1), y.flatten())
    assert torch.allclose(stats["plan_gain"], lost - stats["ce"])


def test_a_frozen_base_trains_only_the_plan(data):
    plan_data, path = data
    model = make_model("soft", plan_data, load_meta(path)["vocab_size"], base="frozen")
    assert not any(p.requires_grad for p in model.gpt.parameters())
    assert all(p.requires_grad for p in model.plan.parameters())


# --- health and torch.compile --------------------------------------------------------------------------------
def test_majority_baseline_is_scored_on_the_same_sentences_as_the_accuracy(data):
    plan_data, path = data
    model = make_model("soft", plan_data, load_meta(path)["vocab_size"], plan_lambda=1.0)
    majority = int(torch.bincount(plan_data.labels["train"], minlength=K).argmax())
    assert int(model.plan.majority_label) == majority
    # A planner that always answers the majority label scores exactly the baseline.
    with torch.no_grad():
        model.plan.planner.output.weight.zero_()
        model.plan.planner.output.bias.copy_(torch.nn.functional.one_hot(torch.tensor(majority), K) * 10.0)
    x, y, extra = batch(plan_data, path, [0, 15, 241])
    with torch.no_grad():
        _, stats = model.eval()(x, y, extra)
    assert stats["plan_acc"] == stats["plan_majority_acc"] == (extra["plan_label"] == majority).float().mean()
    assert 0 < stats["plan_majority_acc"] < 1


def test_the_health_warning_fires_when_the_lm_ignores_its_plan_not_when_the_planner_leaves_its_labels():
    # Drift off the labels with the plan still read (the main job's soft planner, docs/planner.md) is a code, not a
    # failure: no warning, but the run's planner line says the accuracy is no better than the majority's.
    drifted = {"iter": 250, "val_plan_acc": 0.17, "val_plan_majority_acc": 0.17, "val_plan_gain": 0.02,
               "val_loss": 1.8}
    assert health_warning(drifted) is None
    assert "no better than the majority" in run_report.technique_lines(drifted, {})[0]
    assert "own code" in run_report.technique_lines(drifted, {})[0]
    ignored = {**drifted, "val_plan_acc": 0.3, "val_plan_gain": 0.0005}
    assert "+0.0005 nats" in health_warning(ignored)
    assert "no better" not in run_report.technique_lines(ignored, {})[0]
    # Early in a run (the main job's step 250) a planner still below the majority whose plan the LM does not read
    # yet speaks no code; an untrained one (step 0) is not said to have drifted at all.
    early = {**drifted, "val_plan_gain": 0.0}
    assert "own code" not in run_report.technique_lines(early, {})[0]
    assert "does not read the plan (yet)" in run_report.technique_lines(early, {})[0]
    assert "majority:" not in run_report.technique_lines({**drifted, "iter": 0}, {})[0].split(";", 1)[1]


def test_a_planner_that_gives_every_sentence_the_same_plan_has_no_plan_gain_and_is_warned_about(data):
    plan_data, path = data
    model = make_model("soft", plan_data, load_meta(path)["vocab_size"], plan_lambda=1.0).eval()
    x, y, extra = batch(plan_data, path, [3, 50])
    with torch.no_grad():
        for p in model.plan.projections.parameters():  # created near zero (the plan starts as a no-op): a say
            p.normal_(std=0.5)
        model.plan.planner.output.weight.zero_()  # one distribution for every sentence, whatever it reads
        _, same = model(x, y, extra)
        model.plan.planner.output.weight.normal_(std=0.5)  # a planner that tells its two sentences apart
        _, apart = model(x, y, extra)
    assert float(same["plan_gain"]) == 0.0
    assert health_warning({f"val_{k}": float(v) for k, v in same.items()}) is not None
    assert abs(float(apart["plan_gain"])) > 1e-5


def test_a_compiled_planner_model_has_no_graph_break_and_few_recompiles(data):
    from torch._dynamo.utils import counters
    plan_data, path = data
    model = make_model("soft", plan_data, load_meta(path)["vocab_size"], plan_lambda=0.5)
    compiled = torch.compile(model, backend="aot_eager")  # dynamo decides breaks and recompiles, not the backend
    # Windows whose next tokens span 1, 2 or 3 sentences: the planner's inputs change shape from batch to batch.
    sentence = plan_data.token_sentence["train"]
    spans = np.array([sentence[i + 32] - sentence[i + 1] + 1 for i in range(len(sentence) - 33)])
    starts = {n: np.flatnonzero(spans == n)[:2].tolist() for n in (1, 2, 3)}
    batches = [starts[2], starts[3], [starts[1][0], starts[3][0]], [starts[2][0], starts[3][1]], starts[1]]
    torch._dynamo.reset()
    counters.clear()
    for ix in batches:
        x, y, extra = batch(plan_data, path, ix)
        loss, stats = compiled(x, y, extra)
        loss.backward()
        torch.testing.assert_close(loss, model(x, y, extra)[0])
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["frames"]["total"] <= 3  # static shapes, then dynamic ones, then a size-1 specialisation


# --- the stages through train.py ------------------------------------------------------------------------------
def test_the_stages_chain_through_train_py(data, tmp_path):
    from tools import pretrain_planner
    import train
    _, path = data
    tiny = [train.PLAIN_CONFIG, "--n_layer=3", "--n_head=2", "--n_embd=16", "--block_size=32", "--batch_size=4",
            "--eval_iters=2", "--warmup_iters=2", "--sample_tokens=0", "--compile=False", f"--dataset={path}",
            f"--plan_k={K}", f"--plan_context={M}", "--eval_interval=2", "--device=cpu"]
    train.main([*tiny, f"--out_dir={tmp_path / 'base'}", "--max_iters=2"])
    pretrain_planner.main([f"--dataset={path}", f"--out_dir={tmp_path / 'planner'}", f"--plan_k={K}",
                           f"--plan_context={M}", "--max_iters=3", "--eval_interval=3"])
    planner_weights = torch.load(tmp_path / "planner" / "planner.pt")["planner"]
    hard = train.main([*tiny, f"--out_dir={tmp_path / 'hard'}", "--max_iters=2", "--plan_mode=hard",
                       f"--init_from={tmp_path / 'base' / 'ckpt.pt'}", "--base=frozen",
                       f"--plan_init_planner={tmp_path / 'planner' / 'planner.pt'}"])
    assert all(torch.equal(v, planner_weights[k]) for k, v in hard.model.plan.planner.state_dict().items())
    soft = train.main([*tiny, f"--out_dir={tmp_path / 'soft'}", "--max_iters=0", "--plan_mode=soft",
                       f"--init_from={tmp_path / 'hard' / 'ckpt.pt'}"])
    assert all(torch.equal(v, hard.model.plan.state_dict()[k]) for k, v in soft.model.plan.state_dict().items())
    assert {"val_plan_acc", "val_plan_top5"} <= read_log(tmp_path / "soft")[0].keys()
    with pytest.raises(ConfigError, match="other labels"):
        train.main([*tiny, f"--out_dir={tmp_path / 'k5'}", "--max_iters=0", "--plan_mode=soft", "--plan_k=5",
                    f"--init_from={tmp_path / 'hard' / 'ckpt.pt'}"])
    with pytest.raises(ConfigError, match="untrained planner .init_from .* has no planner"):
        train.main([*tiny, f"--out_dir={tmp_path / 'untrained'}", "--max_iters=0", "--plan_mode=soft",
                    f"--init_from={tmp_path / 'base' / 'ckpt.pt'}"])


@pytest.mark.parametrize("override, message", [
    ({"plan_mode": "softer"}, "plan_mode must be one of"),
    ({"plan_mode": "fixed", "plan_lambda": 0.1}, "plan_lambda"),
    ({"plan_mode": "soft", "plan_embedder": "sbert"}, "plan_embedder must be one of lsa, minilm, mpnet"),
    ({"plan_mode": "uniform", "plan_init_planner": "planner.pt"}, "plan_init_planner is only read by"),
    ({"plan_mode": "soft", "plan_lambda": 0.0}, "untrained planner .the run starts from scratch"),
])
def test_bad_planner_settings_are_refused_with_a_message_naming_them(override, message):
    from training import settings_checks
    import train
    with pytest.raises(ConfigError, match=message):
        settings_checks.check({**train.settings_from([train.PLAIN_CONFIG]), **override})


def test_an_evaluation_measures_the_plan_gain_on_the_validation_split_alone(data, monkeypatch):
    import train
    from training.trainer import Trainer
    _, path = data
    trainer = Trainer(train.settings_from([train.PLAIN_CONFIG, f"--dataset={str(path)!r}", "--plan_mode='soft'",
                                           "--plan_lambda=1.0", f"--plan_k={K}", f"--plan_context={M}", "--n_layer=2",
                                           "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=2",
                                           "--eval_iters=3", "--device='cpu'"]))
    forwards, logits = [], LanguageModel.logits

    def counted(model, *args):
        forwards.append(args)
        return logits(model, *args)

    monkeypatch.setattr(LanguageModel, "logits", counted)
    results = trainer.evaluate()
    assert "plan_gain" in results["val"] and "plan_gain" not in results["train"]  # train.py logs the val split's
    assert len(forwards) == 3 + 2 * 3  # the train split's batches skip the shuffled-plan forward
