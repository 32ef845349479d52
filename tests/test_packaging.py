"""The distribution: a LICENSE matching pyproject.toml, and an sdist that carries the
examples the README points to."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_license_file_matches_pyproject():
    declared = re.search(r'license = \{ text = "([^"]+)" \}', (ROOT / "pyproject.toml").read_text())
    assert declared and declared.group(1) == "BSD-3-Clause"
    text = (ROOT / "LICENSE").read_text()
    assert text.splitlines()[0] == "BSD 3-Clause License"
    assert "Neither the name of the copyright holder" in text  # the third clause


@pytest.mark.slow
def test_sdist_contains_the_examples_and_the_license(tmp_path):
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    source = tmp_path / "source"
    for name in tracked.stdout.splitlines():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-c", "from setuptools import build_meta as b; "
                    f"b.build_sdist({str(tmp_path / 'dist')!r})"],
                   cwd=source, check=True, capture_output=True, timeout=300)
    (archive,) = (tmp_path / "dist").glob("fastgrad-*.tar.gz")
    with tarfile.open(archive) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    examples = {p.relative_to(ROOT).as_posix() for p in (ROOT / "examples").glob("*.py")}
    assert examples and examples <= names
    assert "LICENSE" in names
