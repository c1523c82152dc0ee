"""Docs that run: every command README.md, docs/*.md, launch/README.md and the product modules' docstrings show is
checked by the real parser of the program it calls (DeepSpeed's launcher, `odyssey`'s parsers down to the verb,
torchrun's, the parser a `python -m` module or script builds), every YAML block is validated by its config model,
every repo path they name exists, and the cheap commands really run. Blocks are found, not listed, so a new one is
checked without an edit here; tests/docs_blocks.py says how commands, placeholders and `[...]` options are read.
sbatch's own options need a SLURM: tests/launch/test_docs_sbatch.py."""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests import docs_blocks as docs
from tests import docs_checks as checks
from tests.docs_blocks import ROOT, Snippet

SNIPPETS = docs.all_snippets()
COMMANDS = [s for s in SNIPPETS if s.kind in ("shell", "inline")]
YAMLS = [s for s in SNIPPETS if s.kind in ("yaml", "yaml-docstring")]


def ids(snippets: list[Snippet]) -> list[str]:
    return [s.where for s in snippets]


def checked(s: Snippet, check) -> list[str]:
    if s.skip:
        pytest.skip(s.skip)
    return check(s)


@pytest.mark.parametrize("snippet", COMMANDS, ids=ids(COMMANDS))
def test_documented_commands_parse(snippet):
    problems = checked(snippet, checks.check_shell)
    assert not problems, f"{snippet.where}:\n" + "\n".join(problems)


@pytest.mark.parametrize("snippet", YAMLS, ids=ids(YAMLS))
def test_documented_yaml_validates(snippet):
    problems = checked(snippet, checks.check_yaml)
    assert not problems, f"{snippet.where}:\n" + "\n".join(problems)


PATH_SOURCES = {docs.rel(p): lambda p=p: (checks.doc_text_for_paths(p), p.parent) for p in docs.doc_files()} | {
    "module docstrings": lambda: ("\n".join(checks.docstring_for_paths(p) for p in docs.product_modules()), ROOT),
    "odyssey help texts": lambda: (checks.help_texts(), ROOT),
    "docs/X.md in product code": lambda: ("\n".join(
        m for p in docs.product_modules() for m in re.findall(r"docs/\w+\.md", p.read_text())), ROOT),
}


@pytest.mark.parametrize("source", PATH_SOURCES)
def test_named_repo_paths_exist(source):
    text, here = PATH_SOURCES[source]()
    problems = checks.missing_paths(text, here)
    assert not problems, f"{source}:\n" + "\n".join(problems)


def test_every_launch_name_prints_an_existing_path():
    """`python -m launch NAME` really runs, wherever a doc or docstring names one (a shell comment included)."""
    texts = [p.read_text() for p in docs.doc_files()] + [p.read_text() for p in docs.product_modules()]
    names = sorted(set().union(*map(checks.launch_names, texts)))
    assert names, "the docs name no launch script: the pattern no longer matches"
    assert [n for n in names if docs.launch_path(n) is None] == []


def cheap_runs() -> list[tuple[str, list[str]]]:
    """Documented `--help` commands, and `--dry-run` commands whose input files are in the repo."""
    runs = {}
    for s in COMMANDS:
        for argv in docs.snippet_commands(s):
            files = [a for a in argv[1:] if a.endswith((".yaml", ".yml"))]
            dry = "--dry-run" in argv and files and all((ROOT / f).is_file() for f in files)
            if ("--help" in argv or "-h" in argv or dry) and not checks.check_command(argv):
                runs.setdefault(shlex.join(argv), (s.where, argv))
    return sorted(runs.values())


def subprocess_argv(argv: list[str]) -> list[str]:
    prog = argv[0].removeprefix(".venv/bin/")
    head = [sys.executable, "-m", "odyssey"] if prog == "odyssey" else [sys.executable] if prog in docs.PYTHONS \
        else [str(Path(sys.executable).parent / prog)]
    return head + [str(ROOT / a) if (ROOT / a).exists() and "/" in a else a for a in argv[1:]]


CHEAP = cheap_runs()


@pytest.mark.parametrize("where, argv", CHEAP, ids=[f"{w}: {shlex.join(a)}" for w, a in CHEAP])
def test_cheap_documented_commands_run(where, argv, tmp_path):
    """They exit 0. Offline (HF_HUB_OFFLINE here), a dry run of a study whose models live on the hub cannot; it must
    then say so in one `odyssey: error:` line, never a traceback."""
    env = {**os.environ, "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}
    r = subprocess.run(subprocess_argv(argv), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    errors = [ln for ln in r.stderr.splitlines() if ln.strip() and "[WARNING]" not in ln]
    one_line = r.returncode == 2 and len(errors) == 1 and errors[0].startswith("odyssey: error:")
    assert r.returncode == 0 or ("--dry-run" in argv and one_line), f"{where}: exit {r.returncode}\n{r.stderr[-3000:]}"


def test_cheap_runs_are_found():
    assert any("--help" in a for _, a in CHEAP) and any("--dry-run" in a for _, a in CHEAP), CHEAP


@pytest.mark.parametrize("script", docs.SCRIPT_ARGS)
def test_script_argument_table_matches_the_scripts(script):
    """The table that says where a shipped script hands its arguments on is true of the script's text."""
    module, _ = docs.SCRIPT_ARGS[script]
    text = (ROOT / script).read_text()
    said = {"trainer.train": r"(-m|--module) trainer\.train", "odyssey": r"odyssey study|-m odyssey study"}[module]
    assert re.search(said, text) or "submit_study" in script and "study_step.sbatch" in text, script


def test_architecture_names_every_module_and_verb():
    from odyssey.cli import build_parser

    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    modules = [docs.rel(p) for pkg in ("odyssey", "study", "trainer", "analysis", "launch", "data_prep")
               for p in sorted((ROOT / pkg).glob("*.py")) if p.name != "__init__.py" or pkg == "launch"]
    verbs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [m for m in modules if f"`{m}`" not in text] + [f"odyssey {v}" for v in verbs
                                                             if f"`odyssey {v}`" not in text]
    assert not missing, f"docs/ARCHITECTURE.md does not name: {missing}"


def test_hf_source_syntax_is_whole_wherever_it_is_spelled_out():
    texts = [p.read_text() for p in docs.doc_files() + docs.product_modules()] + [checks.help_texts()]
    spelled = {m for t in texts for m in re.findall(r"hf://[A-Z_]+\[[^\s`\"')]*", t)}
    assert spelled and all(s.endswith("[:CONFIG][@SPLIT]") for s in spelled), spelled


# ---------------------------------------------------------------- the checks reject what they should

PLANTED = [  # (kind of block, its text, what the refusal says)
    ("shell", "deepspeed --num_gpus 8 -m trainer.train run.yaml", "deepspeed: error: unrecognized arguments: -m"),
    ("shell", "deepspeed --num_gpus 2 --module trainer.train \\\n    run.yaml --bogus",
     "unrecognized arguments: --bogus"),
    ("shell", "odyssey train run.yaml --nprocs 2", "unrecognized arguments: --nprocs 2"),
    ("shell", "odyssey trian run.yaml", "invalid choice: 'trian'"),
    ("shell", "FOO=1 torchrun --nproc_per_node 2 -m trainer.train run.yaml optim.lrr=1",
     "config key 'optim.lrr': unknown key"),
    ("shell", "mkdir -p logs && python -m trainer.trian run.yaml", "no such module"),
    ("shell", "sbatch --nodes=2 launch/slurm/nope.sbatch run.yaml  # a comment",
     "launch/slurm/nope.sbatch: no such file"),
    ("shell", "make demoo | tee log", "no target 'demoo'"),
    ("shell", 'sbatch "$(python -m launch slurm/nope.sbatch)" run.yaml', "no such script"),
    ("yaml", "optim: {lrr: 1.0e-4}", "config key 'optim.lrr': unknown key"),
    ("yaml", "task: {examples: many}", "config key 'task.examples'"),
    ("yaml", "colour: blue", "no config model takes"),
    ("yaml", "name: s\nout_dir: o\nmodel: {path: m}\ndomains: [{name: a, path: a}]", "study key 'domains'"),
]


@pytest.mark.parametrize("kind, text, refusal", PLANTED, ids=[t.split("\n")[0] for _, t, _ in PLANTED])
def test_a_planted_bad_block_is_refused(kind, text, refusal):
    check = {"shell": checks.check_shell, "yaml": checks.check_yaml}[kind]
    problems = check(Snippet("planted:1", kind, text))
    assert any(refusal in p for p in problems), problems


def test_good_commands_pass_in_both_optional_forms():
    good = ("deepspeed --num_gpus 8 --module trainer.train run.yaml optim.lr=2e-5\n"
            "deepspeed --num_gpus 2 --module trainer.train CONFIG.yaml [dotted.key=value ...] [--resume auto]\n"
            "HOSTS=a,b launch/deepspeed_multinode.sh run.yaml 2>&1 | tee launch.log")
    snippet = Snippet("planted:1", "shell", good)
    assert len(docs.snippet_commands(snippet)) == 5 and checks.check_shell(snippet) == []


def test_a_fragment_is_checked_for_its_verb_and_option_names():
    assert checks.check_shell(Snippet("p:1", "inline", "odyssey study … --list")) == []
    assert checks.check_shell(Snippet("p:1", "inline", "odyssey study … --lists"))
    assert checks.check_shell(Snippet("p:1", "inline", "odyssey stud study.yaml"))
    assert checks.check_shell(Snippet("p:1", "inline", "deepspeed --hostfile … --no_sshh --module trainer.train"))


def test_planted_missing_paths_are_found():
    text = ("see `docs/NOPE.md`, NOPE.md, `trainer/nope.py`, `trainer/data.py: no_such_function` and "
            "`launch/slurm/train.sbatch`, `trainer/data.py: lm_batch`; not `checkpoints/step_N` or "
            "`study/summary.json`")
    problems = checks.missing_paths(text)
    assert len(problems) == 4 and all(any(w in p for p in problems) for w in
                                      ("docs/NOPE.md", "NOPE.md: no such doc", "trainer/nope.py", "no_such_function"))


def test_fences_skip_markers_and_shell_syntax_are_read():
    text = ("1. step\n   ```bash\n   odyssey prep x\n   ```\n<!-- docs-test: skip (a sketch) -->\n```yaml\nk: v\n```\n")
    assert docs.fences(text) == [(2, "bash", "odyssey prep x", None), (6, "yaml", "k: v", "a sketch")]
    line = 'A=1 B="x y" odyssey eval --checkpoints "$RUN"/ckpt 2>&1 | tee <run_dir>/log && make demo # done'
    assert docs.commands(line) == [["odyssey", "eval", "--checkpoints", "RUN/ckpt"], ["tee", "run_dir/log"],
                                   ["make", "demo"]]
    lines = docs.logical_lines("python - <<'PY'\nimport x\nPY\na \\\n  b  # c\n")
    assert [ln.split() for ln in lines] == [["python", "-", "<<'PY'"], ["a", "b"]]
