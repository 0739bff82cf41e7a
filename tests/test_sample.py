"""sample.py as a user meets it: before training, with --help, and called again and again from a notebook."""

import pytest

import sample
import train
from data.write import write_dataset
from tools import export_gpt2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    write_dataset(path / "data", {"train": ["the cat sat on the mat.\n" * 40], "val": ["the mat sat.\n" * 20]}, "char",
                  "tiny", "made by the test")
    train.main([train.PLAIN_CONFIG, f"--dataset={path / 'data'}", f"--out_dir={path / 'out'}", "--n_layer=1",
                "--n_head=1", "--n_embd=8", "--block_size=8", "--batch_size=2", "--max_iters=0", "--eval_iters=1",
                "--sample_tokens=0", "--compile=False", "--device=cpu"])
    return str(path / "out")


def samples_printed(capsys):
    return capsys.readouterr().out.count(" tokens/s\n")


def test_two_calls_in_one_process_each_start_from_the_defaults(trained, capsys):
    sample.main([f"--out_dir={trained}", "--num_samples=1", "--max_new_tokens=4", "--temperature=0", "--device=cpu"])
    assert samples_printed(capsys) == 1
    sample.main([f"--out_dir={trained}", "--max_new_tokens=4", "--device=cpu"])
    assert samples_printed(capsys) == 3  # the default, not the first call's 1
    assert (sample.num_samples, sample.temperature) == (3, 0.8)


def test_sampling_before_training_names_the_setting_sample_takes(tmp_path):
    with pytest.raises(FileNotFoundError, match="train first .python train.py., or point out_dir at a run's folder"):
        sample.main([f"--out_dir={tmp_path}"])


@pytest.mark.parametrize("main, line", [(train.main, "--max_iters=3000"), (sample.main, "--num_samples=3"),
                                        (export_gpt2.main, "--out_dir='out'")])
def test_help_prints_the_settings_with_their_defaults(main, line, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    assert line in [text.strip().split("  ")[0] for text in capsys.readouterr().out.splitlines()[1:]]
