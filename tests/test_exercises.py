"""The course kit (tools/exercises.py): in a student's copy written to a temporary folder, each exercise's grader
fails on its blank, with the blank's own error, and passes on the answer. The graders run in a process of their own
per copy (three copies, about 7 s each on 2 cores, most of it importing torch): about 25 s in all."""

import json
import os
import subprocess
import sys

import pytest

from configurator import ConfigError
from tools import exercises
from tools.exercises import EXERCISES, ROOT

# Run in the copy: each exercise's grader, pytest.main in one process, each test's outcome and error to a JSON file.
GRADE = """
import json, sys
import pytest

class Outcomes:
    def __init__(self):
        self.tests = {}

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.failed:
            self.tests[report.nodeid] = report.outcome, str(report.longrepr or "")

    def pytest_collectreport(self, report):
        if report.failed:
            self.tests[report.nodeid] = report.outcome, str(report.longrepr)

result = {}
for name, (tests, expression) in json.loads(sys.argv[1]).items():
    outcomes = Outcomes()
    pytest.main(["-q", "-p", "no:cacheprovider", tests, "-k", expression], plugins=[outcomes])
    result[name] = outcomes.tests
json.dump(result, open(sys.argv[2], "w"))
"""


def grade(copy, names):
    """{exercise: {test id: (outcome, error)}} of the graders of names, run in the copy."""
    graders = {name: EXERCISES[name][2:] for name in names}
    subprocess.run([sys.executable, "-c", GRADE, json.dumps(graders), str(copy / "outcomes.json")], cwd=copy,
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True, capture_output=True)
    return json.loads((copy / "outcomes.json").read_text())


# each exercise's place among its technique's (named technique-part), in the order they are done
RANK = {name: [other for other in EXERCISES if other.split("-")[0] == name.split("-")[0]].index(name)
        for name in EXERCISES}


@pytest.mark.parametrize("k", range(max(RANK.values()) + 2))
def test_each_grader_fails_on_its_own_blank_and_passes_once_it_and_those_above_it_are_done(k, tmp_path):
    # Blanked together: the k-th exercise of each technique (past the last, none). Each one's grader must fail,
    # every test of it on its own blank's NotImplementedError; the graders of the exercises above them must pass,
    # as every grader must on the answer. One copy and one process for each k, to keep this fast.
    blanked = [name for name in EXERCISES if RANK[name] == k]
    done = [name for name in EXERCISES if RANK[name] < k]
    exercises.write_copy(tmp_path, blanked)
    result = grade(tmp_path, blanked + done)
    for name in blanked:
        assert result[name], f"{name}'s grader selects no test"
        for test, (outcome, error) in result[name].items():
            assert outcome == "failed" and f"NotImplementedError: exercise {name}" in error, test
    for name in done:
        assert result[name] and {outcome for outcome, _ in result[name].values()} == {"passed"}, name


def test_the_students_copy_holds_no_answer_and_no_marker_and_the_rest_unchanged(tmp_path):
    exercises.write_copy(tmp_path, list(EXERCISES))
    for path in exercises.repository_files():
        original = (ROOT / path).read_text(encoding="utf-8", errors="replace")
        if path == exercises.KIT_TEST:
            assert not (tmp_path / path).exists()
        elif path == exercises.TEACHING:  # the labs and exercises stay, the instructors' answers go
            copy = (tmp_path / path).read_text(encoding="utf-8")
            assert exercises.ANSWERS in original and exercises.ANSWERS not in copy and "Lab 1." not in copy
            assert "## Exercises: write the method" in copy and "## After the labs" in copy
        elif exercises.MARK not in original:
            assert (tmp_path / path).read_text(encoding="utf-8", errors="replace") == original, path
    for name, (path, task, _, _) in EXERCISES.items():
        original, copy = (ROOT / path).read_text(), (tmp_path / path).read_text()
        region = original.split(f"{exercises.MARK}{name}\n")[1].split(exercises.END)[0]
        # the region's code lines that the file has nowhere else (an `else:` may well be elsewhere)
        code = [line for line in region.splitlines() if line.strip() and not line.strip().startswith("#")
                and original.splitlines().count(line) == 1]
        comments = [line.strip() for line in region.splitlines() if line.strip().startswith("#")]
        assert code and not set(code) & set(copy.splitlines()), name
        assert all(comment in copy for comment in comments), name
        assert f'raise NotImplementedError("exercise {name}: {task}")' in copy
        assert exercises.MARK not in copy and exercises.END not in copy


def test_bad_requests_are_refused_naming_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="no exercise ngram-tial: choose from ngram-tail"):
        exercises.write_copy(tmp_path, ["ngram-tial"])
    with pytest.raises(ConfigError, match="inside this repository"):
        exercises.write_copy(ROOT / "course", ["ngram-tail"])
    (tmp_path / "kept.txt").write_text("a student's work")
    with pytest.raises(ConfigError, match="not empty: name a new folder"):
        exercises.write_copy(tmp_path, ["ngram-tail"])
    with pytest.raises(ConfigError, match="--to=DIR"):
        exercises.main([])


def test_teaching_md_gives_each_exercise_its_grader():
    page = (ROOT / "docs" / "teaching.md").read_text(encoding="utf-8")
    assert [name for name in EXERCISES if f"| {name} |" not in page or exercises.grader(name) not in page] == []
