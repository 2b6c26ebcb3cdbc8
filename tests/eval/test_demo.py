"""``synthmed demo --quick``: every step's output, one report that renders, and no overwrite of
an existing folder without ``--overwrite``."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from synthmed.cli import cli

from .test_report import rendered_body


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SYNTHMED_CACHE", str(root / "cache"))
        result = CliRunner().invoke(cli, ["demo", "--out", str(root / "out"), "--quick",
                                          "--no-progress"])
    assert result.exit_code == 0, result.output
    return root / "out", result.output


@pytest.mark.slow
def test_demo_writes_every_step(demo):
    out, output = demo
    assert all(f"{k}/7" in output for k in range(1, 8))
    assert (out / "data" / "phantom-t1.npz").is_file()
    rows = list(csv.DictReader((out / "synthetic" / "manifest.csv").open()))
    assert rows and {row["class_name"] for row in rows} == {"lesion", "no lesion"}
    results = json.loads((out / "utility" / "results.json").read_text())
    regimes = {cell["regime"] for cell in results["cells"]}
    assert {"real", "real-repeated", "real+synthetic x1", "synthetic only"} <= regimes
    assert "Headline" in (out / "utility" / "report.md").read_text()
    assert "real vs real (floor)" in (out / "fidelity" / "fidelity.md").read_text()
    privacy = json.loads((out / "privacy" / "privacy.json").read_text())
    assert set(privacy["membership"]) == {"pixels", "features", "discriminator"}
    assert privacy["settings"]["train_seen_by_run"] == privacy["settings"]["n_train"]
    assert (out / "privacy" / "closest_pairs.png").is_file()
    translation = json.loads((out / "translation" / "translation.json").read_text())
    assert len(translation["per_subject"]) == 1
    assert not list(out.rglob(".*partial*"))


@pytest.mark.slow
def test_demo_report_renders(demo):
    out, _ = demo
    page = out / "synthmed-report.html"
    text = page.read_text()
    for section in ("Export <code>synthetic</code>", "Evaluation <code>utility</code>",
                    "Evaluation <code>fidelity</code>", "Evaluation <code>privacy</code>",
                    "Evaluation <code>translation</code>"):
        assert section in text
    body = rendered_body(page)
    assert body["data-broken-images"] == "0"
    # the answer first: the verdict on the first screen, before the data previews
    assert body["data-first-section"] == "Verdict" and int(body["data-first-section-top"]) < 150
    start = text.index("<h2>Verdict</h2>")
    verdict = text[start:text.index("<h2>", start + 1)]
    for finding in ("Does synthetic data help?", "Synthetic images alone", "Fidelity",
                    "Privacy"):
        assert finding in verdict


@pytest.mark.slow
def test_demo_refuses_an_existing_folder(demo):
    out, _ = demo
    before = sorted(p.name for p in out.iterdir())
    result = CliRunner().invoke(cli, ["demo", "--out", str(out), "--quick", "--no-progress"])
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert sorted(p.name for p in out.iterdir()) == before
