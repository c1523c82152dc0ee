"""Real task data from offline sources (issue 13): two generation and two classification tasks, each with a training
split, an in-domain test set and an out-of-domain test set, written as jsonl for `odyssey prep --task`:

    <out>/<task>/train.jsonl, test.jsonl     in-domain
    <out>/<task>_ood/test.jsonl              out-of-domain (an eval-only task folder)

- license_category (classification): a full license text → permissive or copyleft (ScanCode's `category`);
  out-of-domain: license *notices* (the short snippets ScanCode's rules match), labelled by their single license.
- license_title (generation): a license text → its name; out-of-domain: a Python reference-manual section → its
  heading.
- faq_question (generation): a Python FAQ answer → its question; out-of-domain: a HOWTO section → its heading.
- passage_domain (classification): a 600-character passage → code, legal, literature or fortunes; out-of-domain: the
  same four sources in single lines of 60-200 characters.

The licenses come from PyPI (`licensedcode-data`); the Python manual, fortunes and Austen from Debian packages, which
are skipped with a message where apt cannot fetch them. Deterministic: the same files every time.
"""
from __future__ import annotations

import json
import random
import re
import zipfile
from pathlib import Path

from data_prep.console import log
from demo.assets import AssetUnavailable, _pip_download, _python_manual_nodes, _spread, build_domains

INPUT_CHARS = 600  # every input is cut here: a prompt plus one FTICL demonstration fits 384 tokens, fast on a CPU
HEADER = re.compile(r"\A---\n(.*?)\n---\n", re.S)
CATEGORY = {"Permissive": "permissive", "Copyleft": "copyleft", "Copyleft Limited": "copyleft"}


def _write(root: Path, split: str, rows: list[dict]) -> None:
    """Write a split; an unchanged file is left alone, so a study sees its source as unchanged."""
    root.mkdir(parents=True, exist_ok=True)
    path, text = root / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows)
    if not (path.is_file() and path.read_text() == text):
        path.write_text(text)


def _unique(rows: list[dict], exclude: set[str] = frozenset()) -> list[dict]:
    """One row per input text (license variants share texts), none of those in `exclude`."""
    seen, out = set(exclude), []
    for r in rows:
        if r["input"] not in seen:
            seen.add(r["input"])
            out.append(r)
    return out


def _split(rows: list[dict], test: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    rows = _unique(rows)
    random.Random(seed).shuffle(rows)
    return rows[test:], rows[:test]


def _licenses() -> tuple[dict[str, dict], list[tuple[str, str]]]:
    """({license key: header fields + text}, [(rule's license key, notice text)]) from ScanCode's data."""
    with zipfile.ZipFile(_pip_download("licensedcode-data")) as z:
        licenses, notices = {}, []
        for name in sorted(n for n in z.namelist() if n.endswith((".LICENSE", ".RULE"))):
            raw = z.read(name).decode("utf-8", errors="replace")
            m = HEADER.match(raw)
            if not m:
                continue
            fields = dict(line.split(": ", 1) for line in m.group(1).splitlines() if ": " in line)
            text = raw[m.end():].strip()
            if name.endswith(".LICENSE") and text:
                licenses[fields.get("key", Path(name).stem)] = {**fields, "text": text}
            elif fields.get("is_license_notice") == "yes" and 80 <= len(text) <= 1500:
                notices.append((fields.get("license_expression", ""), text))
    return licenses, notices


def license_tasks(out: Path) -> None:
    licenses, notices = _licenses()
    labelled = [{"input": lic["text"][:INPUT_CHARS], "label": CATEGORY[lic["category"]]}
                for lic in licenses.values() if lic.get("category") in CATEGORY]
    train, test = _split(labelled, 150)
    _write(out / "license_category", "train", train)
    _write(out / "license_category", "test", test)
    ood = [{"input": text[:INPUT_CHARS], "label": CATEGORY[licenses[key]["category"]]} for key, text in notices
           if key in licenses and licenses[key].get("category") in CATEGORY]
    ood = _unique(ood, exclude={r["input"] for r in labelled})
    _write(out / "license_category_ood", "test", _spread(ood, 300)[:300])
    titled = [{"input": lic["text"][:INPUT_CHARS], "output": " " + lic["name"]} for lic in licenses.values()
              if lic.get("name") and len(lic["text"]) > 200]
    train, test = _split(titled, 150)
    _write(out / "license_title", "train", train)
    _write(out / "license_title", "test", test)


def _sections(chapters: set[str]) -> list[tuple[str, str]]:
    """(heading without its number, body) of the manual's sections in these chapters: a heading line underlined
    with = - * or ."""
    found = []
    for ch, node in _python_manual_nodes():
        if ch not in chapters:
            continue
        parts = re.split(r"\n([^\n]{8,120})\n[=\-*.]{8,}\n", node)
        found += [(re.sub(r"^[\d.]+\s*", "", h.strip()), b.strip()) for h, b in zip(parts[1::2], parts[2::2])
                  if len(b.strip()) > 200]
    return found


def python_manual_tasks(out: Path) -> None:
    faq = [{"input": body[:INPUT_CHARS], "output": " " + head} for head, body in
           _sections({"Python Frequently Asked Questions"}) if head.endswith("?")]
    train, test = _split(faq, len(faq) // 3)
    _write(out / "faq_question", "train", train)
    _write(out / "faq_question", "test", test)
    howto = [{"input": body[:INPUT_CHARS], "output": " " + head} for head, body in _sections({"Python HOWTOs"})]
    _write(out / "faq_question_ood", "test", _spread(howto, 150)[:150])
    reference = {"The Python Language Reference", "The Python Standard Library", "Python Setup and Usage"}
    titles = [{"input": body[:INPUT_CHARS], "output": " " + head} for head, body in _sections(reference)]
    _write(out / "license_title_ood", "test", _spread(titles, 150)[:150])


def passage_tasks(out: Path) -> None:
    names = ("code", "legal", "literature", "fortunes")
    folders = build_domains(list(names))
    if set(folders) != set(names):
        raise AssetUnavailable(f"passage_domain needs {names}; built {sorted(folders)}")
    long_rows, short_rows = [], []
    for label, folder in folders.items():
        files = sorted(folder.glob("*.txt"))
        for f in _spread(files, 120)[:120]:
            text = f.read_text()
            long_rows.append({"input": text[:INPUT_CHARS], "label": label})
            lines = [ln.strip() for ln in text[600:].splitlines() if 60 <= len(ln.strip()) <= 200]  # unseen text
            short_rows += [{"input": ln, "label": label} for ln in lines[:1]]
    train, test = _split(long_rows, 80)
    _write(out / "passage_domain", "train", train)
    _write(out / "passage_domain", "test", test)
    random.Random(0).shuffle(short_rows)  # mixed labels from the start: evaluations take the first N examples
    _write(out / "passage_domain_ood", "test", short_rows)


def build_tasks(out: Path) -> list[str]:
    """Every task the sources here allow; returns the folders written."""
    for build in (license_tasks, python_manual_tasks, passage_tasks):
        try:
            build(out)
        except AssetUnavailable as err:
            log(f"skipping {build.__name__}: {err}", tag="demo")
    built = sorted(p.name for p in out.iterdir() if p.is_dir())
    log(f"task data in {out}: {', '.join(built)}", tag="demo")
    return built


if __name__ == "__main__":
    import sys

    build_tasks(Path(sys.argv[1] if len(sys.argv) > 1 else "demo_out/tasks"))
