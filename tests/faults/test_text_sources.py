"""Text sources that hold binary files: a file without a suffix (or with a text one) that is mostly not text is
skipped whole and counted, never tokenized as U+FFFD soup; mostly-text files keep having their few bad bytes replaced;
the summary line and the manifest state every count; a source with nothing left is one line, exit 2, nothing written.
The faults are written from here: random bytes, NUL bytes, Latin-1, into a text folder or archive."""
import json
import random
import tarfile

from data_prep.manifest import read_manifest
from data_prep.prepare import PrepOptions, prepare_domain
from data_prep.sources import iter_docs
from data_prep.text_files import decode_file
from tests import tiny
from tests.cli import odyssey

SEQ = 32
LATIN1 = ("caf\xe9 au lait, s'il vous pla\xeet. " * 40).encode("latin-1")  # 2 bad bytes in 31: 6%


def random_bytes(n: int, seed: int, nul: bool) -> bytes:
    """n random bytes; without NUL bytes when `nul` is False (then only the share of bad bytes marks them)."""
    rng = random.Random(seed)
    return bytes(rng.randrange(0 if nul else 1, 256) for _ in range(n))


def write_binaries(folder, n: int) -> None:
    """n binary files without a suffix: even ones hold NUL bytes, odd ones none (about 43% of bytes not UTF-8)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"blob{i:03d}").write_bytes(random_bytes(400, seed=i, nul=i % 2 == 0))


def prep(tmp_path, assets, source, *extra):
    """The real `odyssey prep` on one source → (completed process, its `odyssey: error` lines)."""
    r = odyssey(["prep", source, "--domain", "d", "--out", tmp_path / "out", "--tokenizer", assets["model"],
                 "--seq-len", SEQ, "--workers", "0", "--quiet", *extra], tmp_path)
    return r, [line for line in r.stderr.splitlines() if line.startswith("odyssey: error")]


def test_the_rule_nul_bytes_or_a_high_share_of_bad_bytes():
    assert decode_file(b"plain text\n", 0.3) == ("plain text\n", False)
    assert decode_file(LATIN1, 0.3) == (LATIN1.decode("utf-8", errors="replace"), True)  # kept, bytes replaced
    assert decode_file(LATIN1, 0.05) is None  # 6% bad bytes: binary under a stricter share
    assert decode_file(b"text" * 10 + b"\0" + b"text", 1.0) is None  # a NUL byte: binary whatever the share
    assert decode_file(b"x" * 9000 + b"\0", 0.3) == ("x" * 9000 + "\0", False)  # only the first 8 KiB are looked at
    noisy = random_bytes(2000, seed=1, nul=False)
    assert decode_file(noisy, 0.3) is None
    assert decode_file(noisy, 1.0)[1] is True  # 1 keeps every file without a NUL byte


def test_all_binary_source_is_one_line_exit_2_and_nothing_written(tmp_path, assets):
    """The issue's case: 200 of 200 files are binary (no suffix); prep used to exit 0 without a word."""
    write_binaries(tmp_path / "src", 200)
    r, errors = prep(tmp_path, assets, tmp_path / "src")
    assert r.returncode == 2, r.stderr
    assert errors == [f"odyssey: error: domain 'd': every file of source {tmp_path / 'src'} is binary (200 skipped: "
                      f"a NUL byte in the first 8 KiB, or over 30% of bytes not UTF-8; max_bad_bytes "
                      f"(--max-bad-bytes) sets that share)"], r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert list((tmp_path / "out").iterdir()) == []  # no domain, no .d.partial


def test_failed_prep_leaves_the_previous_domain_untouched(tmp_path, assets):
    tiny.write_text_dir(tmp_path / "good", tiny.prose_docs(120, seed=3))
    first = prepare_domain(tmp_path / "good", tmp_path / "out", "d", str(assets["model"]), SEQ,
                           PrepOptions(progress=False, workers=0))
    write_binaries(tmp_path / "bad", 6)
    r, errors = prep(tmp_path, assets, tmp_path / "bad", "--overwrite")
    assert r.returncode == 2 and len(errors) == 1 and "is binary (6 skipped" in errors[0], r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["d"]
    assert read_manifest(tmp_path / "out" / "d") == first


def test_mixed_source_skips_and_counts_every_kind(tmp_path, assets):
    docs = tiny.prose_docs(120, seed=3)
    src = tiny.write_text_dir(tmp_path / "src", docs + docs[:7] + ["tiny", "   "])
    write_binaries(src, 4)
    (src / "zz_noise.txt").write_bytes(random_bytes(3000, seed=7, nul=False))  # a text suffix does not save it
    (src / "zz_latin1.txt").write_bytes(LATIN1)
    r, errors = prep(tmp_path, assets, src, "--min-chars", "20", "--dedup")
    assert r.returncode == 0 and errors == [], r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"prepared domain 'd' in {tmp_path / 'out'}/d ("), r.stdout
    read = len(docs) + 7 + 2 + 1
    assert lines[0].endswith(f"; kept {len(docs) + 1} of {read} documents; skipped 2 shorter than 20 chars, "
                             f"7 duplicates, 5 binary files; 1 documents with non-UTF-8 bytes replaced by U+FFFD")
    s = json.loads((tmp_path / "out" / "d" / "manifest.json").read_text())["source"]
    assert (s["docs_read"], s["docs_kept"], s["skipped_short"], s["skipped_duplicate"], s["skipped_binary"],
            s["non_utf8_docs"], s["max_bad_bytes"]) == (read, len(docs) + 1, 2, 7, 5, 1, 0.3)
    splits = json.loads((tmp_path / "out" / "d" / "manifest.json").read_text())["splits"]
    assert sum(st["docs"] for st in splits.values()) == len(docs) + 1  # no binary file was tokenized


def test_the_share_option_moves_the_line(tmp_path, assets):
    src = tiny.write_text_dir(tmp_path / "src", tiny.prose_docs(120, seed=3))
    (src / "zz_latin1.txt").write_bytes(LATIN1)
    r, errors = prep(tmp_path, assets, src, "--max-bad-bytes", "0.05")
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip().endswith("0 duplicates, 1 binary files; 0 documents with non-UTF-8 bytes replaced by "
                                      "U+FFFD"), r.stdout
    assert read_manifest(tmp_path / "out" / "d")["source"]["max_bad_bytes"] == 0.05
    r, errors = prep(tmp_path, assets, src, "--max-bad-bytes", "1.5", "--overwrite")
    assert r.returncode == 2 and errors == ["odyssey: error: max_bad_bytes is a share of a file's bytes, from 0 to 1; "
                                            "got 1.5"], r.stderr


def test_binary_members_of_an_archive_and_line_documents(tmp_path):
    """In an archive too, and with one document per line a binary file is one skip, not one per 'line'."""
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "a.txt").write_text("first line\nsecond line\n")
    (folder / "blob").write_bytes(random_bytes(500, seed=3, nul=True).replace(b"\0", b"\n\0"))
    (folder / "latin1.txt").write_bytes(LATIN1)
    with tarfile.open(tmp_path / "src.tar.gz", "w:gz") as tar:
        for p in sorted(folder.iterdir()):
            tar.add(p, arcname=p.name)
    got = list(iter_docs(tmp_path / "src.tar.gz", boundary="line"))
    assert [(d.key, d.binary) for d in got] == [("a.txt:0", False), ("a.txt:1", False), ("blob", True),
                                                ("latin1.txt:0", False)]
    assert got[2].text == "" and got[3].bad_bytes
