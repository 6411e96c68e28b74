"""cli.py's flag forms: booleans as --flag / --no-flag, defaults shown, paths in the repository found from any folder
and shown relative to it; every entry script's --help run from outside the repository."""
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

from cli import ROOT, InRepo, opt, parse

SCRIPTS = ["calibrate.py", "sample.py", "eval.py", "analyze.py", "train.py", "export.py", "bench.py",
           "data/corpus.py", "data/prepare.py", "data/prepare_code.py"]


@dataclass
class Args:
    a_sym: bool = opt(True, "symmetric activations")
    chat: bool = opt(False, "chat template")
    data: str = opt(InRepo("data/tasks"), "task folder")
    steps: int = opt(8, "steps")


def test_booleans_take_both_forms_and_paths_in_the_repository_are_absolute():
    assert parse(Args, []) == Args(True, False, os.path.join(ROOT, "data", "tasks"), 8)
    assert parse(Args, ["--no-a_sym", "--chat", "--data", "here", "--steps", "3"]) == Args(False, True, "here", 3)
    with pytest.raises(SystemExit):
        parse(Args, ["--a_sym", "yes"])  # no value form: --a_sym [A_SYM] is gone


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_from_another_folder_shows_defaults_and_no_path_of_this_clone(script, tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, script), "--help"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())  # argparse wraps lines
    assert ROOT not in text and "[A_SYM]" not in text and "[CHAT]" not in text
    assert "default" in text
    if script == "calibrate.py":
        assert "--a_sym, --no-a_sym" in text and "(default: data/wiki_calib.txt.gz, in the repository)" in text
