"""``fastgrad check``: exit statuses, one-line errors, the model file's folder on sys.path,
strict JSON, no warnings or BrokenPipeError tracebacks on stderr.

Most tests call :func:`fastgrad.cli.main` in this process; those about what reaches a real
stderr or stdout (warnings, a closed pipe, the program's own traceback) run
``python -m fastgrad`` in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fastgrad.cli import FAILED, PASSED, USAGE, main

#: A correct model: f = Σ sin θ on 4 coordinates.
SINE = """
import numpy as np
theta = np.linspace(0.1, 1.0, 4)
def loss(t):
    return float(np.sum(np.sin(t)))
grad = np.cos(theta)
"""


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def _main(argv) -> int:
    """main(argv)'s status, also when argparse ends it with SystemExit."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def _program(args, cwd=None, **options):
    """``python -m fastgrad ARGS`` as a subprocess."""
    return subprocess.run([sys.executable, "-m", "fastgrad", *map(str, args)], cwd=cwd,
                          text=True, timeout=300, **options)


def _assert_one_line_usage_error(status, stderr: str):
    assert status == USAGE, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastgrad"), stderr
    assert "Traceback" not in stderr


# ------------------------------------------------------------------ item 12: sibling modules
def test_model_file_imports_its_own_modules_and_sys_path_is_restored(tmp_path, capsys):
    before = list(sys.path)
    for value, folder in ((1.0, tmp_path / "first"), (3.0, tmp_path / "second")):
        folder.mkdir()
        _write(folder, "fg_sibling_net.py", f"""
            import numpy as np
            SCALE = {value}
            def forward(t):
                return SCALE * float(np.sum(np.sin(t)))
            """)
        model = _write(folder, "model.py", """
            import numpy as np
            from fg_sibling_net import forward, SCALE
            theta = np.linspace(0.1, 1.0, 4)
            loss = forward
            grad = SCALE * np.cos(theta)
            """)
        # each model sees its own sibling (a stale module from the first would fail the second)
        assert main(["check", str(model)]) == PASSED, capsys.readouterr()
        assert capsys.readouterr().out.startswith("PASS")
        assert sys.path == before
        assert "fg_sibling_net" not in sys.modules


def test_program_imports_the_model_files_siblings_from_another_folder(tmp_path):
    folder, elsewhere = tmp_path / "model", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    _write(folder, "net.py", "import numpy as np\ndef f(t):\n    return float(np.sum(np.sin(t)))\n")
    _write(folder, "model.py", "import numpy as np\nfrom net import f as loss\n"
                               "theta = np.linspace(0.1, 1.0, 4)\ngrad = np.cos(theta)\n")
    result = _program(["check", folder / "model.py"], cwd=elsewhere, capture_output=True)
    assert result.returncode == PASSED, result.stderr
    assert result.stdout.startswith("PASS")


# ------------------------------------------------------------------ item 13: exit statuses
BAD_MODELS = {
    "grad with the wrong signature": SINE + "grad = lambda t, extra: np.cos(t)\n",
    "grad that raises": SINE + "def grad(t):\n    raise RuntimeError('no gradient today')\n",
    "list theta of unequal shapes": """
        import numpy as np
        theta = [np.ones(2), np.ones(3)]
        def loss(t):
            return float(sum(np.sum(np.sin(a)) for a in t))
        grad = [np.cos(a) for a in theta]
        """,
    "sys.exit(0) while loading": "import sys\nsys.exit(0)\n",
    "sys.exit(3) while loading": "import sys\nsys.exit(3)\n",
    "exception while loading": "import numpy as np\nraise KeyError('weights')\n",
    "import error while loading": "import fastgrad_no_such_module\n",
    "missing names": "import numpy as np\ntheta = np.ones(3)\n",
    "args not a tuple": SINE + "args = 3\n",
    "loss returns NaN (LossError)": SINE + "loss = lambda t: float('nan')\n",
    "loss calls sys.exit": SINE + "import sys\nloss = lambda t: sys.exit(0)\n",
}


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_every_input_error_exits_2_with_one_line(case, tmp_path, capsys):
    model = _write(tmp_path, "model.py", BAD_MODELS[case])
    status = _main(["check", str(model)])
    captured = capsys.readouterr()
    if case == "list theta of unequal shapes" and status == PASSED:
        return  # theta may be a sequence of groups (issue 10, item 8): then it is checked
    _assert_one_line_usage_error(status, captured.err)
    assert captured.out == ""


@pytest.mark.parametrize("options", [["--seed", "-1", "--sample", "3"], ["--seed", "abc"],
                                     ["--sample", "0"], ["--sample", "x"], ["--detect", "2,0.05"],
                                     ["--eps", "-1"], ["--workers", "0"], ["--directions", "0"],
                                     ["--method", "backward"], ["--no-such-option"]])
def test_every_bad_option_exits_2_with_one_line(options, tmp_path, capsys):
    model = _write(tmp_path, "model.py", SINE)
    status = _main(["check", str(model), *options])
    _assert_one_line_usage_error(status, capsys.readouterr().err)


def test_exit_1_only_for_a_wrong_gradient(tmp_path, capsys):
    correct = _write(tmp_path, "correct.py", SINE)
    wrong = _write(tmp_path, "wrong.py", SINE + "grad = grad.copy(); grad[2] *= 1.01\n")
    assert main(["check", str(correct)]) == PASSED
    assert main(["check", str(wrong)]) == FAILED
    assert "theta[2]" in capsys.readouterr().out


def test_the_program_prints_no_traceback_for_a_bad_grad_or_seed(tmp_path):
    model = _write(tmp_path, "model.py", BAD_MODELS["grad with the wrong signature"])
    for options in ([], ["--seed", "-1", "--sample", "3"]):
        result = _program(["check", model, *options], capture_output=True)
        _assert_one_line_usage_error(result.returncode, result.stderr)


def test_traceback_option_shows_the_failing_line_of_the_model_file(tmp_path, capsys):
    model = _write(tmp_path, "model.py", """
        import numpy as np
        def weights():
            return np.load("no-such-weights.npy")
        theta = weights()
        """)
    assert main(["check", str(model)]) == USAGE
    short = capsys.readouterr().err
    assert "Traceback" not in short and "FileNotFoundError" in short
    assert short.rstrip().endswith(" (--traceback shows where)")
    assert main(["check", str(model), "--traceback"]) == USAGE
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert f'File "{model}", line 5, in <module>' in err  # theta = weights()
    assert f'File "{model}", line 4, in weights' in err  # the np.load
    assert "runpy" not in err and "cli.py" not in err  # from the user's first frame on
    assert err.splitlines()[-1] == short.strip().removesuffix(" (--traceback shows where)")


def test_a_closed_stdout_ends_without_a_traceback(tmp_path):
    """``fastgrad check model.py | head`` with head already gone: stdout is a pipe whose
    reading end is closed before the program starts, so its write fails for certain."""
    model = _write(tmp_path, "model.py", SINE)
    wrong = _write(tmp_path, "wrong.py", SINE + "grad = 2 * grad\n")
    reading, writing = os.pipe()
    os.close(reading)
    try:
        for path, status, options in ((model, PASSED, []), (model, PASSED, ["--json"]),
                                      (wrong, FAILED, [])):
            result = _program(["check", path, *options], stdout=writing, stderr=subprocess.PIPE)
            assert result.stderr == "", result.stderr
            assert result.returncode == status  # the verdict still decides the status
    finally:
        os.close(writing)


# ------------------------------------------------------------------ item 14: strict JSON
def test_json_is_strict_and_its_seed_an_integer(tmp_path, capsys):
    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    model = _write(tmp_path, "model.py", SINE)
    assert main(["check", str(model), "--json", "--sample", "2", "--seed", "7"]) == PASSED
    data = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert data["seed"] == 7 and data["verdict"] == "pass" and data["non_finite"] == {}
    # a loss of magnitude 1e200, whose figures have overflowed (issue 10, item 1)
    huge = _write(tmp_path, "huge.py", """
        import numpy as np
        theta = np.linspace(0.1, 1.0, 20)
        loss = lambda t: 1e200 * float(np.sum(np.sin(t)))
        grad = 1e200 * np.cos(theta)
        """)
    main(["check", str(huge), "--json"])
    data = json.loads(capsys.readouterr().out, parse_constant=refuse)
    for path in data["non_finite"]:
        assert path.split(".")[0].split("[")[0] in data


# ------------------------------------------------------------------ item 15: complex warnings
def test_complex_method_on_a_float_loss_prints_only_the_input_error(tmp_path):
    model = _write(tmp_path, "model.py", SINE)  # its loss calls float()
    result = _program(["check", model, "--method", "complex"], capture_output=True,
                      env={**os.environ, "PYTHONWARNINGS": "default"})
    _assert_one_line_usage_error(result.returncode, result.stderr)
    assert "method='complex'" in result.stderr and "Warning" not in result.stderr


# ------------------------------------------------------------------ item 17: the text on the CLI
def test_cli_text_names_the_seed_option(tmp_path, capsys):
    model = _write(tmp_path, "model.py", SINE)
    assert main(["check", str(model), "--sample", "1", "--seed", "12"]) == PASSED
    out = capsys.readouterr().out
    seed_line = next(line for line in out.splitlines() if line.startswith("seed "))
    assert "--seed 12 repeats the sample" in seed_line and "seed=" not in seed_line
    # sample 1 of 4 is raised to all 4 by the floor of min(group size, 16): said, never 275%
    assert "275.00%" not in out and "checked whole" in out and "asked for 1" in out
