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


def test_the_verdict_comes_first_and_run_settings_fold(folder, tmp_path):
    root = tmp_path / "demo"
    shutil.copytree(folder, root)
    (root / "utility").mkdir()
    (root / "utility" / "report.md").write_text("# Does synthetic data help the classifier?\n")
    head = {"metric": "auroc", "best_synthetic": "real+synthetic x1",
            "best_without": "real-repeated", "gain_mean": 0.012, "gain_ci_low": 0.002,
            "gain_ci_high": 0.022, "n": 5, "converged": 0.8}
    regimes = {"real": {"auroc": {"mean": 0.8, "ci_low": 0.78, "ci_high": 0.82}},
               "synthetic only": {"auroc": {"mean": 0.72, "ci_low": 0.7, "ci_high": 0.74}}}
    (root / "utility" / "summary.json").write_text(
        json.dumps({"0.25": {"regimes": regimes, "headline": head}}))
    (root / "fidelity").mkdir()
    (root / "fidelity" / "fidelity.md").write_text("# Fidelity\n")
    scores = {"fid": 12.0, "recall": 0.5, "coverage": 0.4}
    (root / "fidelity" / "fidelity.json").write_text(json.dumps(
        {"overall": scores, "floor": {"fid": 2.0, "recall": 0.9, "coverage": 0.95}}))
    (root / "privacy").mkdir()
    (root / "privacy" / "privacy.md").write_text("# Privacy\n")
    (root / "privacy" / "privacy.json").write_text(json.dumps({
        "dcr": {"pixels": {"near_copy_share": 0.0, "closer_to_train_share": 0.61}},
        "membership": {"discriminator": {"advantage": 0.3, "advantage_ci": [0.2, 0.4]}}}))
    page, markdown = build_report(root)
    text = markdown.read_text()
    assert text.index("## Verdict") < text.index("## Training run")
    assert ("`real+synthetic x1` against the best without synthetic images `real-repeated` "
            "(both picked on validation): auroc gain +0.012 [+0.002, +0.022] over 5 seeds: "
            "synthetic data helped, but UNCONVERGED: in 20% of the seeds") in text
    assert "auroc 0.720 [0.700, 0.740] against 0.800 with the real images (0.90x)" in text
    assert ("FID 12.0 (real-vs-real floor 2.0), recall 0.50 (floor 0.90), coverage 0.40 "
            "(floor 0.95)") in text
    assert ("near-copies of training images 0.0% of the synthetic ones; closer to a training "
            "than to a held-out image 0.61 (0.5 is ideal); membership advantage over the "
            "control (95 % CI): discriminator +0.30 [+0.20, +0.40]") in text
    html_text = page.read_text()
    assert "<details><summary>Settings (" in html_text
    assert "<details><summary>Provenance" in html_text
    body = rendered_body(page)
    assert body["data-first-section"] == "Verdict"
    assert 0 <= int(body["data-first-section-top"]) < 150  # on the first screen, under the title
    assert body["data-folded"] == "2"  # the run's settings and the export's provenance


def test_no_verdict_without_a_utility_fidelity_or_privacy_result(folder):
    _, markdown = build_report(folder)
    assert "## Verdict" not in markdown.read_text()


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
