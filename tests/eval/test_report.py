"""``synthmed report``: sections by folder kind, embedded images, the Markdown subset, errors,
and the page rendered in headless Chromium with no broken image."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from synthmed.cli import cli
from synthmed.errors import InputError
from synthmed.eval.report import build_report, markdown_to_html

pytestmark = pytest.mark.usefixtures("one_thread")

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--virtual-time-budget=10000"]


def rendered_body(page: Path) -> dict[str, str]:
    """The ``<body>`` attributes of ``page`` after headless Chromium loaded it, or skip."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium): render check skipped")
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                              "--dump-dom", page.resolve().as_uri()],
                             capture_output=True, text=True, timeout=120, check=True).stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, "no <body> in the rendered page"
    return dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))


def picture(path: Path, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 12), value, np.uint8)).save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A tiny DCGAN run, an evaluation and an export, as the demo lays them out."""
    root = tmp_path_factory.mktemp("report")
    run = CliRunner().invoke(cli, ["train", "dcgan", "phantom:n=16,size=32", "--out",
                                   str(root / "run"), "--size", "32", "--width", "4",
                                   "--epochs", "2", "--batch-size", "8", "--no-progress"])
    assert run.exit_code == 0, run.output
    (root / "eval").mkdir()
    (root / "eval" / "translation.md").write_text(
        "# Translation evaluation\n\n| method | MAE |\n|---|---|\n| synthmed | 1.5 |\n")
    picture(root / "eval" / "panel_s1.png")
    (root / "export").mkdir()
    (root / "export" / "provenance.json").write_text(json.dumps({"images": 2, "seed": 0}))
    (root / "export" / "manifest.csv").write_text("path,label\na.png,0\nb.png,1\n")
    return root


def test_sections_and_embedded_images(folder):
    page, markdown = build_report(folder)
    text = page.read_text()
    assert "Training run <code>run</code> (dcgan)" in text
    assert "<td>synthmed</td><td>1.5</td>" in text
    assert "Export <code>export</code>" in text and "2 files listed" in text
    sources = re.findall(r"src='data:(image/\w+);base64,([^']+)'", text)
    names = re.findall(r"<img alt='([^']+)'", text)
    assert {"epoch_0002.png", "progress.gif", "losses.png", "panel_s1.png"} <= set(names)
    assert len(sources) == len(names)
    for mime, data in sources:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert image.format.lower() == mime.split("/")[1]
    assert "](run/samples/epoch_0002.png)" in markdown.read_text()
    assert "src=\"file:" not in text and "src='file:" not in text  # self-contained


def test_the_page_renders_without_broken_images(folder):
    page, _ = build_report(folder)
    body = rendered_body(page)
    assert body["data-broken-images"] == "0"
    assert int(body["data-images"]) == page.read_text().count("<img ")


def test_a_broken_image_is_reported_by_the_page(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "report.md").write_text("# Utility\n")
    (tmp_path / "eval" / "gain.png").write_bytes(b"not a png")
    page, _ = build_report(tmp_path)
    assert rendered_body(page)["data-broken-images"] == "1"


def test_markdown_subset():
    html = markdown_to_html("## Title `x`\n\n- one **two**\n- three\n\n| a | b \\| c |\n"
                            "|---|---|\n| 1 | 2 |\n\nplain <tag>")
    assert "<h2>Title <code>x</code></h2>" in html
    assert "<ul><li>one <strong>two</strong></li><li>three</li></ul>" in html
    assert "<th>a</th><th>b | c</th>" in html and "<td>1</td><td>2</td>" in html
    assert "<p>plain &lt;tag&gt;</p>" in html


def test_errors(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        build_report(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("nothing to show")
    with pytest.raises(InputError, match="holds no run"):
        build_report(tmp_path)
    result = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 1 and "holds no run" in result.output
    assert not (tmp_path / "synthmed-report.html").exists()


def test_report_command(folder):
    result = CliRunner().invoke(cli, ["report", str(folder)])
    assert result.exit_code == 0, result.output
    assert "synthmed-report.html" in result.output
