"""Reports in Jupyter: ``_repr_html_`` of a report and of a step scan is well-formed XHTML,
says the verdict, the causes and the groups with their colours, escapes what it shows, and
renders in a real headless browser (Debian's Chromium, where installed)."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

import fastgrad as fg
from fastgrad.models import mlp
from fastgrad.notebook import COLOURS


@pytest.fixture(scope="module")
def reports():
    problem = mlp.problem(4, 6, 3, m=16, seed=1)
    args = (problem.X, problem.Y)
    grad = mlp.grad(problem.params, *args)
    good = fg.check(mlp.loss_params, grad, problem.params, args)
    bad = fg.check(mlp.loss_params, {**grad, "b2": grad["b2"] / 16}, problem.params, args)
    return good, bad


def _tree(markup: str) -> ElementTree.Element:
    return ElementTree.fromstring(markup)  # raises on anything not well-formed


def _text(element) -> str:
    return " ".join("".join(element.itertext()).split())


def test_a_failing_report_shows_verdict_causes_and_coloured_rows(reports):
    _, bad = reports
    root = _tree(bad._repr_html_())
    text = _text(root)
    assert text.startswith("FAIL relative error")
    assert "likely causes" in text and bad.causes[0].sentence in text
    rows = {_text(row.find("td")): row.get("style", "") for row in root.iter("tr")
            if row.find("td") is not None}
    assert COLOURS["fail"] in rows["b2"] and COLOURS["ok"] in rows["W1"]
    assert "b2[0]" in rows  # the worst coordinates


def test_a_passing_report_has_no_causes_and_a_green_badge(reports):
    good, _ = reports
    root = _tree(good._repr_html_())
    assert _text(root).startswith("PASS") and "likely causes" not in _text(root)
    assert COLOURS["pass"] in root.find("div").get("style")


def test_what_the_report_shows_is_escaped():
    theta = {"<b>&": np.array([0.5, -0.2])}
    report = fg.check(lambda p: float(np.sum(p["<b>&"] ** 2)), {"<b>&": np.array([1.0, 0.4])}, theta)
    markup = report._repr_html_()
    assert "&lt;b&gt;&amp;" in markup and "<b>&" not in markup.replace("<b>FAIL</b>", "")
    _tree(markup)


def test_a_step_scan_renders_its_table_with_the_default_row_marked():
    theta = np.array([0.7, -1.3])
    scan = fg.step_scan(lambda t: float(np.sum(np.sin(t))), theta, [0, 1], grad=np.cos(theta))
    root = _tree(scan._repr_html_())
    rows = [row for row in root.iter("tr") if row.find("td") is not None]
    assert len(rows) == scan.steps.size
    marked = [row for row in rows if "background" in row.get("style", "")]
    assert len(marked) == 1
    assert float(_text(marked[0].find("td"))) == pytest.approx(scan.default_step, rel=0.2)
    assert len(list(root.iter("b"))) == len(scan.labels)  # one smallest error per coordinate


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (Debian: apt-get install chromium)")
def test_the_html_renders_in_a_headless_browser(reports, tmp_path):
    _, bad = reports
    page = tmp_path / "report.html"
    theta = np.array([0.3, -1.2, 0.8])
    taylor = fg.taylor_test(lambda t: float(np.sum(np.sin(t))), np.cos, theta, seed=0)
    scan = fg.step_scan(lambda t: float(np.sum(np.sin(t))), theta, [0], grad=np.cos(theta))
    body = bad._repr_html_() + taylor._repr_html_() + scan._repr_html_()
    page.write_text(f"<!DOCTYPE html><html><body>{body}</body></html>", encoding="utf-8")
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1000,700", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1000, 700)
