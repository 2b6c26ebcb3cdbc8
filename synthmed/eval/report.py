"""``synthmed report DIR``: one self-contained HTML page (images embedded) and a Markdown file
for any run or evaluation directory, or a folder of them (the demo's output).

Each folder below DIR becomes a section by what it holds: a training run (``config.yaml``:
its settings, last metrics, latest samples, ``progress.gif``, ``losses.png``), an evaluation
(``report.md``, ``translation.md``, ``fidelity.md``, ``privacy.md`` and the plots beside
them), an export (``provenance.json`` and ``manifest.csv``) or a few loose pictures (a
preview); sections follow the order the folders were written in. The page checks its own images
once loaded and records any that failed in ``<body data-broken-images>``.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import re
from pathlib import Path
from typing import Any

from synthmed.errors import InputError
from synthmed.eval.verdict import verdict_lines
from synthmed.gan import checkpoint
from synthmed.io import MANIFEST, PROVENANCE, atomic_write

HTML_NAME = "synthmed-report.html"
MARKDOWN_NAME = "synthmed-report.md"
EVALUATION_FILES = ("report.md", "translation.md", "fidelity.md", "privacy.md")
MIME = {".png": "image/png", ".gif": "image/gif"}
MAX_LOOSE_PICTURES = 8  # a folder of only a few pictures (a preview) gets a section
STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;
padding:3px 8px;text-align:left}th{background:#f3f3f3}img{max-width:100%;margin:.5em 0;
image-rendering:pixelated}h2{border-bottom:2px solid #ddd;margin-top:2em}code{background:#f3f3f3;
padding:0 3px}figure{margin:1em 0}figcaption{color:#666;font-size:85%}"""
CHECK = """window.addEventListener('load',function(){var bad=[],d=document.body.dataset;
document.querySelectorAll('img').forEach(function(i){if(!i.complete||i.naturalWidth===0)
bad.push(i.alt)});d.brokenImages=bad.length;d.images=document.images.length;
var first=document.querySelector('h2');d.firstSection=first?first.textContent:'';
d.firstSectionTop=first?Math.round(first.getBoundingClientRect().top):-1;
d.folded=document.querySelectorAll('details:not([open])').length})"""
FOLD = "<details><summary>{}</summary>"  # a Markdown line that opens a collapsed block
UNFOLD = "</details>"


def build_report(folder: Path) -> tuple[Path, Path]:
    """Write ``synthmed-report.html`` and ``synthmed-report.md`` into ``folder``; return both.

    Raises:
        InputError: ``folder`` does not exist or holds nothing a report can show.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("no such folder", folder)
    folders = [folder, *(p for p in folder.rglob("*") if p.is_dir()
                         and not any(part.startswith(".") for part in p.relative_to(folder).parts))]
    ordered = sorted(folders, key=_made_at)
    sections = [section for path in ordered for section in _sections(path, folder)]
    if not sections:
        raise InputError("holds no run, evaluation or export to report on", folder)
    title = f"synthmed report: {folder.resolve().name}"
    verdict = "\n".join(verdict_lines([(_name(path, folder), path) for path in ordered]))
    markdown = "\n\n".join([f"# {title}", *([verdict] if verdict else []),
                             *(s["markdown"] for s in sections)]) + "\n"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{STYLE}</style><script>{CHECK}</script></head><body>"
            f"<h1>{html.escape(title)}</h1>" + markdown_to_html(verdict)
            + "".join(s["html"] for s in sections) + "</body></html>\n")
    paths = folder / HTML_NAME, folder / MARKDOWN_NAME
    atomic_write(paths[0], page.encode())
    atomic_write(paths[1], markdown.encode())
    return paths


def _made_at(folder: Path) -> tuple[float, str]:
    """When a folder's oldest file was written: sections follow the order the work was done."""
    times = [p.stat().st_mtime for p in folder.iterdir() if p.is_file()]
    return min(times, default=float("inf")), folder.as_posix()


def _name(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path != root else path.name


def _sections(path: Path, root: Path) -> list[dict[str, str]]:
    """The sections one folder contributes (none for a plain folder)."""
    name = _name(path, root)
    if (path / checkpoint.CONFIG).is_file():
        return [_run_section(path, name, root)]
    found = [path / f for f in EVALUATION_FILES if (path / f).is_file()]
    if found:
        return [_evaluation_section(path, name, found, root)]
    if (path / PROVENANCE).is_file():
        return [_export_section(path, name)]
    pictures = sorted(path.glob("*.png"))
    inside_run = (path.parent / checkpoint.CONFIG).is_file()  # a run's samples/ are shown
    if 0 < len(pictures) <= MAX_LOOSE_PICTURES and not inside_run:
        return [_section([f"## Images `{name}`", ""], pictures, root)]
    return []


def _run_section(path: Path, name: str, root: Path) -> dict[str, str]:
    from synthmed.gan.run_config import read_run_config  # the models' modules only when needed
    from synthmed.settings import to_dict

    config = read_run_config(path)
    lines = (path / checkpoint.METRICS).read_text().splitlines() \
        if (path / checkpoint.METRICS).is_file() else []
    last = json.loads(lines[-1]) if lines else {}
    settings = {f"{part}.{k}": v for part, section in (("model", config.model),
                                                       ("train", config.train))
                for k, v in to_dict(section).items()}
    text = [f"## Training run `{name}` ({config.kind})", "",
            FOLD.format(f"Settings ({len(settings)}) and last epoch metrics"), "",
            _markdown_table(["setting", "value"], [[k, v] for k, v in settings.items()]), "",
            _markdown_table(["last epoch metric", "value"], [[k, v] for k, v in last.items()]),
            "", UNFOLD, ""]
    samples = sorted((path / "samples").glob("epoch_*.png"))
    images = [p for p in [*(samples[-1:]), path / "progress.gif", path / "losses.png"]
              if p.is_file()]
    return _section(text, images, root)


def _evaluation_section(path: Path, name: str, found: list[Path], root: Path
                        ) -> dict[str, str]:
    text = [f"## Evaluation `{name}`", ""]
    for report in found:
        body = report.read_text()
        text += [re.sub(r"^(#+)", r"#\1", line) for line in body.splitlines()] + [""]
    images = sorted(path.glob("*.png"))
    return _section(text, images, root)


def _export_section(path: Path, name: str) -> dict[str, str]:
    provenance = json.loads((path / PROVENANCE).read_text())
    rows = [[k, json.dumps(v) if isinstance(v, dict | list) else v]
            for k, v in provenance.items()]
    text = [f"## Export `{name}`", "", FOLD.format("Provenance"), "",
            _markdown_table(["provenance", "value"], rows), "", UNFOLD, ""]
    manifest = path / MANIFEST
    if manifest.is_file():
        with manifest.open(newline="", encoding="utf-8") as handle:
            count = sum(1 for _ in csv.DictReader(handle))
        text.append(f"{count} files listed in `manifest.csv`.")
    return {"markdown": "\n".join(text), "html": markdown_to_html("\n".join(text))}


def _section(text: list[str], images: list[Path], root: Path) -> dict[str, str]:
    markdown = "\n".join(text + [f"![{p.name}]({p.relative_to(root).as_posix()})"
                                 for p in images])
    figures = "".join(
        f"<figure><img alt='{html.escape(p.name)}' src='data:{MIME.get(p.suffix, 'image/png')};"
        f"base64,{base64.b64encode(p.read_bytes()).decode()}'><figcaption>"
        f"{html.escape(p.relative_to(root).as_posix())}</figcaption></figure>"
        for p in images)
    return {"markdown": markdown, "html": markdown_to_html("\n".join(text)) + figures}


def _markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)])


def markdown_to_html(text: str) -> str:
    """The Markdown our reports use: headings, pipe tables, bullet lists, paragraphs,
    ``**bold**``, `` `code` `` and the lines that fold a block (:data:`FOLD`, :data:`UNFOLD`),
    kept as they are."""
    out: list[str] = []
    lines = text.splitlines()
    k = 0
    while k < len(lines):
        line = lines[k]
        if line.startswith(("<details>", UNFOLD)):
            out.append(line)
        elif line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 6)
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("|"):
            rows = []
            while k < len(lines) and lines[k].startswith("|"):
                rows.append(lines[k])
                k += 1
            out.append(_table(rows))
            continue
        elif line.startswith("- "):
            items = []
            while k < len(lines) and lines[k].startswith("- "):
                items.append(f"<li>{_inline(lines[k][2:])}</li>")
                k += 1
            out.append(f"<ul>{''.join(items)}</ul>")
            continue
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        k += 1
    return "\n".join(out)


def _table(rows: list[str]) -> str:
    cells = [re.split(r"(?<!\\)\|", row.strip().strip("|")) for row in rows]
    header, body = cells[0], [r for r in cells[1:] if not all(set(c.strip()) <= set("-:")
                                                              for c in r)]
    head = "".join(f"<th>{_inline(c.strip())}</th>" for c in header)
    rows_html = "".join("<tr>" + "".join(f"<td>{_inline(c.strip())}</td>" for c in row)
                        + "</tr>" for row in body)
    return f"<table><tr>{head}</tr>{rows_html}</table>"


def _inline(text: str) -> str:
    text = html.escape(text.replace("\\|", "|"))
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)
