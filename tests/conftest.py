"""Fixtures several test files share."""

import pytest

from data.write import write_dataset


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus")
    text = "the quick brown fox jumps over the lazy dog. " * 200
    write_dataset(path, {"train": [text[:7000]], "val": [text[7000:]]}, "char", "tiny", "made by the test")
    return str(path)
