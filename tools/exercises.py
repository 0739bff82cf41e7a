"""
A student's copy of the repository with the heart of each technique blanked, graded by the tests it already has.

    python -m tools.exercises --to=../course     # then, in ../course, each exercise's pytest command (printed)

An exercise is the code between `# exercise: NAME` and `# end exercise` in the source. In the copy that code is
replaced by `raise NotImplementedError` naming what to write; the region's comments (the equation each line
computes) and the function's docstring stay, the markers go. The grader of an exercise is a set of the
repository's own tests, chosen to fail on the blank and pass on the answer (tests/test_exercises.py checks both).
Do them in the table's order within a technique: a grader may need the exercises above it (ngram-gradient's tests
build the targets, mod-distillation's run the mixture, plan-soft's read batches). docs/teaching.md has the
exercises beside the labs.
"""

import subprocess
import sys
from pathlib import Path

from configurator import ConfigError, configure, is_setting

# -----------------------------------------------------------------------------
to = ""  # the folder the student's copy is written to: new or empty, outside this repository
only = ""  # comma-separated exercise names to blank (default: all of them)
# -----------------------------------------------------------------------------
SETTINGS = {k: v for k, v in globals().items() if is_setting(k, v)}
ROOT = Path(__file__).resolve().parents[1]
MARK, END = "# exercise: ", "# end exercise"
KIT_TEST = "tests/test_exercises.py"  # tests the kit, not the student's code: not in the copy
TEACHING, ANSWERS = "docs/teaching.md", "## Answers for instructors"  # the copy's teaching.md is without them
# name: (file, what to write, its grader: a test file and a pytest -k expression)
EXERCISES = {
    "ngram-tail": ("ngram.py", "deal each context's tail tokens to its in-S occurrences (set tail_ids)",
                   "tests/test_ngram.py", "tail_divides or unbiased or variance_is_below"),
    "ngram-gradient": ("ngram.py", "return the sparse loss's gradient with respect to the logits",
                       "tests/test_ngram.py", "sparse_loss or alpha_zero"),
    "mod-mixture": ("mod.py", "the routing weights g (weights) and the mixed state (mixed)",
                    "tests/test_mod.py", "mixed_logits or distribution_per_token"),
    "mod-distillation": ("mod.py", "return the distillation from the final layer",
                         "tests/test_mod.py", "distillation"),
    "plan-alignment": ("data/sentences.py", "set target (the sentence planning each position), ids and index",
                       "tests/test_planner.py", "t_plus_1 or sentences_once"),
    "plan-soft": ("planner.py", "set p in modes uniform, soft and st, then return every v_l",
                  "tests/test_planner.py", "one_hot_distribution or controls or plan_gain_is"),
}


def grader(name):
    """The command that grades an exercise, run in the student's copy."""
    _, _, tests, expression = EXERCISES[name]
    return f'python -m pytest -q {tests} -k "{expression}"'


def blank(source, names):
    """source with the regions of the exercises `names` blanked and every marker dropped."""
    out, region = [], None
    for line in source.splitlines(keepends=True):
        text = line.strip()
        if text.startswith(MARK):
            region, indent = text[len(MARK):], line[:len(line) - len(line.lstrip())]
        elif text == END:
            if region in names:
                out.append(f'{indent}raise NotImplementedError("exercise {region}: {EXERCISES[region][1]}")\n')
            region = None
        elif region not in names:
            out.append(line)
        elif text.startswith("#"):  # a blanked region keeps its comments, at the region's indentation
            out.append(f"{indent}{text}\n")
    return "".join(out)


def without_answers(page):
    """teaching.md without its answers section (from its heading to the next one)."""
    start = page.index(ANSWERS)
    end = page.find("\n## ", start + len(ANSWERS))
    return page[:start] + (page[end + 1:] if end >= 0 else "")


def repository_files():
    """The files of this checkout a clone has, and those not yet committed that git does not ignore."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                                capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise ConfigError(f"{ROOT} is not a git checkout (or git is not installed): run this from a clone") from None
    return [path for path in listed.decode().split("\0") if path and (ROOT / path).is_file()]


def write_copy(folder, names):
    """Write the repository to folder with the exercises `names` blanked."""
    folder = Path(folder).resolve()
    unknown = [name for name in names if name not in EXERCISES]
    if unknown:
        raise ConfigError(f"no exercise {', '.join(unknown)}: choose from {', '.join(EXERCISES)}")
    if folder == ROOT or ROOT in folder.parents:
        raise ConfigError(f"--to={folder} is inside this repository: write the copy outside it")
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"--to={folder} exists and is not empty: name a new folder")
    blanked = {EXERCISES[name][0] for name in names}
    for path in repository_files():
        if path == KIT_TEST:
            continue
        text = (ROOT / path).read_bytes()
        if path.endswith(".py") and MARK.encode() in text:
            source = text.decode()
            for name in names:
                if EXERCISES[name][0] == path and source.count(f"{MARK}{name}\n") != 1:
                    raise ConfigError(f"{path} has no single '{MARK}{name}' region: restore its markers")
            text = blank(source, names).encode()
            if path in blanked:
                compile(text, path, "exec")  # a region cut where the code cannot stop is a bug of its markers
        if path == TEACHING:
            text = without_answers(text.decode()).encode()
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(text)


def main(argv):
    s = dict(SETTINGS)
    configure(s, argv, help_from=__file__)
    if not s["to"]:
        raise ConfigError("name the folder of the student's copy: --to=DIR")
    names = [name.strip() for name in s["only"].split(",") if name.strip()] or list(EXERCISES)
    write_copy(s["to"], names)
    print(f"wrote the student's copy to {s['to']}, with {len(names)} exercises blanked; in it, each is graded by:")
    for name in names:
        print(f"  {name} ({EXERCISES[name][0]}): {EXERCISES[name][1]}\n    {grader(name)}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except ConfigError as e:
        sys.exit(f"error: {e}")
