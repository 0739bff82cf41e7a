"""data/encoders.py on a tiny random BERT that each test session writes to disk: no download."""

import json
import random
import sys

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

import data.encoders as encoders
from data.encoders import BATCH_SIZE, load_encoder

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat",
         "big", "red", "old", "house", "."]
MAX_SEQ_LENGTH = 10  # [CLS] + 8 words + [SEP]
TEXTS = ["the cat sat on the mat .", "a dog .", "the big red dog ran under the old house .", "cat", "the old cat sat ."]


def write_model(folder, pooling_mode="pooling_mode_mean_tokens"):
    """A sentence-transformers folder: random tiny BERT (dropout on, as in the real configs), its vocab, its modules."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    transformers.BertModel(config).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": MAX_SEQ_LENGTH}))
    modules = [{"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
               for i, (path, kind) in enumerate([("", "Transformer"), ("1_Pooling", "Pooling"),
                                                 ("2_Normalize", "Normalize")])]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    modes = ["pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens"]
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({m: m == pooling_mode for m in modes}))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("tiny_bert"))


def by_hand(folder, text):
    """The sentence-transformers recipe written out: [CLS] words [SEP] through BERT, mean over tokens, unit length."""
    bert = transformers.BertModel.from_pretrained(folder).eval()
    ids = [VOCAB.index("[CLS]")] + [VOCAB.index(w) for w in text.split()][:MAX_SEQ_LENGTH - 2] + [VOCAB.index("[SEP]")]
    with torch.no_grad():
        hidden = bert(torch.tensor([ids])).last_hidden_state[0]
    return F.normalize(hidden.mean(0), dim=0)


def test_embedding_is_the_normalised_mean_of_the_last_hidden_state(tiny):
    encoder = load_encoder(str(tiny), "cpu")
    assert encoder.dim == 16
    for text in TEXTS:
        torch.testing.assert_close(encoder.embed([text])[0], by_hand(tiny, text))
    long = "the big red dog ran under the old house . the cat sat ."
    torch.testing.assert_close(encoder.embed([long])[0], by_hand(tiny, long))  # cut to MAX_SEQ_LENGTH tokens
    # dropout is on in the config: repeated calls agree only if the model runs in eval mode
    torch.testing.assert_close(encoder.embed(TEXTS), encoder.embed(TEXTS), rtol=0, atol=0)


def test_padding_in_a_batch_does_not_change_an_embedding(tiny):
    encoder = load_encoder(str(tiny), "cpu")
    one_by_one = torch.cat([encoder.embed([text]) for text in TEXTS])
    torch.testing.assert_close(encoder.embed(TEXTS, batch_size=len(TEXTS)), one_by_one, rtol=0, atol=1e-6)


def test_order_is_kept_when_batches_are_sorted_by_length(tiny):
    encoder = load_encoder(str(tiny), "cpu")
    reference = torch.cat([encoder.embed([text]) for text in TEXTS])
    order = list(range(len(TEXTS))) * 3
    random.Random(0).shuffle(order)
    vectors = encoder.embed([TEXTS[i] for i in order], batch_size=2)
    assert vectors.shape == (len(order), 16) and vectors.dtype == torch.float32
    torch.testing.assert_close(vectors, reference[order], rtol=0, atol=1e-6)


def test_the_batch_size_does_not_change_the_embeddings(tiny):
    encoder = load_encoder(str(tiny), "cpu")
    rng = random.Random(0)
    texts = [" ".join(rng.choices(VOCAB[5:], k=rng.randint(1, 12))) for _ in range(3 * BATCH_SIZE["cpu"] + 5)]
    reference = encoder.embed(texts, batch_size=1)  # no padding at all
    for batch_size in (7, None, len(texts)):  # None: the device's own, BATCH_SIZE["cpu"]
        torch.testing.assert_close(encoder.embed(texts, batch_size=batch_size), reference, rtol=0, atol=1e-6)


@pytest.mark.picks_device
def test_the_gpu_is_picked_when_there_is_one_unless_a_device_is_named(tiny, monkeypatch):
    built_on = []
    monkeypatch.setattr(encoders, "Encoder", lambda folder, device: built_on.append(device))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    load_encoder(str(tiny))
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    load_encoder(str(tiny))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    load_encoder(str(tiny))
    load_encoder(str(tiny), "cpu")
    assert built_on == ["cpu", "mps", "cuda:0", "cpu"]
    with pytest.raises(ValueError, match="device 'cuda:1' is not on this machine"):
        load_encoder(str(tiny), "cuda:1")


def test_the_encoder_runs_in_full_float32_whatever_the_process_set(tiny, monkeypatch):
    # train.py turns TF32 on for the language model on CUDA; the encoder turns it off for its own matmuls only.
    encoder = load_encoder(str(tiny), "cpu")
    assert encoder.batch_size == BATCH_SIZE["cpu"]
    forward, seen = encoder.model.forward, []
    monkeypatch.setattr(encoder.model, "forward", lambda **batch: seen.append(
        torch.backends.cuda.matmul.allow_tf32) or forward(**batch))
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True  # a flag of torch's C++ core, which monkeypatch cannot restore
    try:
        encoder.embed(TEXTS)
        assert seen == [False] and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_bad_encoders_are_refused_in_one_line(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown sentence encoder 'minilm2'"):
        load_encoder("minilm2", "cpu")
    with pytest.raises(ValueError, match="Pooling"):
        load_encoder(str(write_model(tmp_path / "cls", pooling_mode="pooling_mode_cls_token")), "cpu")
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(ValueError, match="pip install transformers"):
        load_encoder(str(tmp_path / "cls"), "cpu")


@pytest.mark.parametrize("at_scale", [False, True])
def test_plan_embedder_minilm_labels_sentences_with_the_encoders_embeddings(tiny, tmp_path, monkeypatch, at_scale):
    import data.sentences as sentences
    import data.sentences_scale as sentences_scale
    from data.write import write_dataset
    if at_scale:  # data/sentences_scale.py's build, which must embed as the one in memory does
        monkeypatch.setattr(sentences_scale, "IN_MEMORY_TOKENS", 0)
        monkeypatch.setattr(sentences_scale, "IN_MEMORY_SENTENCES", 0)
    devices = []
    monkeypatch.setattr(sentences, "load_encoder", lambda name, device="cpu": devices.append(device) or
                        load_encoder(str(tiny), device))  # stands in for MiniLM
    monkeypatch.setitem(sentences.EMBEDDERS, "minilm", 16)
    rng = random.Random(0)
    words = VOCAB[5:-1]

    def document():
        return " ".join(" ".join(rng.choices(words, k=rng.randint(3, 6))) + " ." for _ in range(rng.randint(2, 4)))
    write_dataset(tmp_path, {"train": [document() for _ in range(20)], "val": [document() for _ in range(4)]},
                  "char", "tiny", source="test")
    data = sentences.PlanData(tmp_path, 3, "minilm", 0, device="cpu")
    assert devices == ["cpu"]  # the labels are built on the device asked for
    texts = sentences.sentence_texts(tmp_path, sentences.load_meta(tmp_path), data.sentences)
    encoder = load_encoder(str(tiny), "cpu")
    embeddings = {split: encoder.embed(texts[split]) for split in ("train", "val")}
    assert torch.equal(data.embeddings["train"], embeddings["train"].half())
    assert torch.equal(data.labels["val"], sentences.nearest_centroid(embeddings["val"], data.centroids))
    # for generation, embedded as stored
    assert torch.equal(data.embedder.embed(texts["val"][:2]), data.embeddings["val"][:2].float())
