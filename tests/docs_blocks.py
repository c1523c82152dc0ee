"""The docs taken apart for tests/unit/test_docs_commands.py: every command, YAML block and repo path that README.md,
docs/*.md, launch/README.md and the product modules' docstrings show (tests/docs_checks.py holds each against the
real program, parser or config model). The conventions a doc follows (so that a new block is checked without a test
edit):

- Shell: fences tagged bash/sh/shell/console (console: only `$ ` lines), untagged fences whose first line starts
  with a known program, indented docstring lines that start with one, and backticked commands in prose. `\\`
  continuations join, `# comments` go, heredoc bodies (`<<'PY'` … `PY`) go, `|`, `&&`, `||` and `;` split commands,
  redirections go, `NAME=value` prefixes go, `$VAR` stays as the placeholder `VAR`, and `$(python -m launch NAME)`
  is run and replaced by what it prints (any other `$(cmd)` is checked as a command of its own).
- Placeholders: `[...]` groups are optional, so a command is checked both without them and with them (brackets
  dropped); `...` and `…` (more of the same) are dropped; file and name placeholders (CONFIG.yaml, <run_dir>,
  run.yaml, an ALL-CAPS word such as DIR) are plain strings to a parser. In fences and docstrings a command is
  complete: an option that takes a number gets a number. A backticked command in prose is a fragment (`odyssey
  study … --list`): its program, verb, module and option names are checked, not its arity.
- YAML fences are validated with the config model their keys name (a fragment such as `task: {...}` is merged into
  a minimal valid config of its kind); a block none of them takes fails, unless the line before its fence is
  `<!-- docs-test: skip (why) -->`.
- Repo paths: `folder/...` of a repo folder (a package folder: only `.py` files and the folder itself, since
  `study/summary.json` is an artifact name) and the top files; `path.py: name` also needs `name` defined there.
  Output folders of the shipped studies (`out_dir` of studies/*.yaml) are not repo paths.
"""
from __future__ import annotations

import ast
import functools
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trainer", "data_prep", "analysis", "study", "odyssey", "launch", "bench", "demo")
TOP_DIRS = (*PACKAGES, "docs", "ds_configs", "studies", "tests")
TOP_FILES = ("README.md", "Makefile", "pyproject.toml")
SHELL_LANGS = {"bash", "sh", "shell", "console"}
PYTHONS = {"python", "python3", "PYTHON"}
# programs the docs show that these tests do not parse, and why
EXTERNAL = {"mkdir": "coreutils", "cd": "shell builtin", "tar": "GNU tar", "cat": "coreutils",
            "huggingface-cli": "the hub's CLI, not a dependency", "scancel": "SLURM", "scontrol": "SLURM",
            "squeue": "SLURM", "ssh": "OpenSSH", "export": "shell builtin", "tee": "coreutils"}
# the shipped scripts hand their arguments on: script → (module, how its argv becomes the module's)
SCRIPT_ARGS = {
    "launch/deepspeed_multinode.sh": ("trainer.train", lambda a: a),
    "launch/slurm/train.sbatch": ("trainer.train", lambda a: a),
    "launch/slurm/train_deepspeed.sbatch": ("trainer.train", lambda a: a),
    "launch/slurm/study_step.sbatch": ("odyssey", lambda a: ["study", a[0], f"--{a[1]}", *a[2:]] if len(a) > 1
                                       else ["study", *a, "--missing-part-argument"]),
    "launch/slurm/study_array.sbatch": ("odyssey", lambda a: ["study", *a, "--config-for", "0"]),
    "launch/slurm/submit_study.sh": ("odyssey", lambda a: ["study", *a, "--list"]),
}
PLACEHOLDER_KEYS = {"dotted.key", "key"}  # `dotted.key=value`: the docs' spelling of "any override"
# programs the docs show that tests/docs_checks.py parses (its PROGRAMS holds a check for each)
PROGRAMS = frozenset({"odyssey", "deepspeed", "torchrun", "sbatch", "mlflow", "make"})
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((.+?)\)\s*-->")


@dataclass(frozen=True)
class Snippet:
    where: str  # file:line, the test id
    kind: str  # "shell" (complete commands), "inline" (a command fragment in prose), "yaml", "yaml-docstring"
    text: str
    skip: str | None = None


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "launch" / "README.md"]


def product_modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ---------------------------------------------------------------- extraction

FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")


def fences(text: str) -> list[tuple[int, str, str, str | None]]:
    """(line of the fence, language, body, skip reason) of every fenced block; indented fences (in lists) too."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = len(m.group(1)), m.group(2).lower(), i
        i += 1
        body = []
        while i < len(lines) and not FENCE.match(lines[i]):
            body.append(lines[i][indent:] if not lines[i][:indent].strip() else lines[i].lstrip())
            i += 1
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        skip = SKIP.search(before)
        out.append((start + 1, lang, "\n".join(body), skip.group(1) if skip else None))
        i += 1
    return out


def without_fences(text: str) -> str:
    """The prose: fenced bodies blanked, line count kept."""
    lines, inside = text.splitlines(), False
    for i, line in enumerate(lines):
        fence = FENCE.match(line) is not None
        if fence or inside:
            lines[i] = ""
        inside ^= fence
    return "\n".join(lines)


def first_program(line: str) -> str | None:
    words = [w for w in line.split() if not re.match(r"^[A-Za-z_]\w*=", w)]
    return words[0] if words else None


def is_command_start(word: str | None) -> bool:
    """A known program, or a shipped script run directly (launch/deepspeed_multinode.sh)."""
    if not word:
        return False
    if word in PROGRAMS or word in PYTHONS or word in EXTERNAL or word.startswith(".venv/bin/"):
        return True
    return word.split("/")[0] in TOP_DIRS and word.endswith((".sh", ".sbatch", ".py"))


def markdown_snippets(path: Path) -> list[Snippet]:
    text, name, out = path.read_text(), rel(path), []
    for line, lang, body, skip in fences(text):
        first = next((ln for ln in body.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
        if lang in SHELL_LANGS or (lang == "" and is_command_start(first_program(first))):
            if lang == "console":
                body = "\n".join(ln[2:] for ln in body.splitlines() if ln.startswith("$ "))
            out.append(Snippet(f"{name}:{line}", "shell", body, skip))
        elif lang in ("yaml", "yml"):
            out.append(Snippet(f"{name}:{line}", "yaml", body, skip))
    prose = without_fences(text)
    for m in re.finditer(r"`([^`]+)`", prose):
        span = " ".join(m.group(1).split())
        if len(span.split()) > 1 and is_command_start(first_program(span)):
            out.append(Snippet(f"{name}:{prose.count(chr(10), 0, m.start()) + 1}", "inline", span))
    return out


def docstring_snippets(path: Path) -> list[Snippet]:
    """Indented blocks of the module docstring: command lines (complete commands) and YAML mappings."""
    tree = ast.parse(path.read_text())
    if not (tree.body and isinstance(tree.body[0], ast.Expr) and isinstance(tree.body[0].value, ast.Constant)
            and isinstance(tree.body[0].value.value, str)):
        return []
    node, out = tree.body[0].value, []
    blocks: list[list[tuple[int, str]]] = [[]]
    for i, line in enumerate(node.value.splitlines()):
        if line.startswith("    ") and line.strip():
            blocks[-1].append((node.lineno + i, line[4:]))
        elif blocks[-1]:
            blocks.append([])
    for block in filter(None, blocks):
        if is_command_start(first_program(block[0][1])):
            out += [Snippet(f"{rel(path)}:{n}", "shell", text) for n, text in block]
        else:
            out.append(Snippet(f"{rel(path)}:{block[0][0]}", "yaml-docstring", "\n".join(t for _, t in block)))
    return out


def all_snippets() -> list[Snippet]:
    return [s for p in doc_files() for s in markdown_snippets(p)] + [
        s for p in product_modules() for s in docstring_snippets(p)]


# ---------------------------------------------------------------- shell syntax

OPERATORS = {"|", "||", "&&", ";", "&"}
REDIRECTS = {">", ">>", "<", ">&", "&>", "<&", ">|"}


def strip_comment(line: str) -> str:
    """The line up to a `#` that starts a word outside quotes (`docs/CONFIG.md#study-file` is no comment)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def logical_lines(text: str) -> list[str]:
    """Lines with heredoc bodies dropped and `\\` continuations joined."""
    out, heredoc, pending = [], None, ""
    for line in text.splitlines():
        if heredoc:
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        line = pending + strip_comment(line)
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        m = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        if m:
            heredoc = m.group(1)
        if line.strip():
            out.append(line)
    return out


def commands(line: str) -> list[list[str]]:
    """The commands of one logical line, as argv lists (see the module docstring for what is rewritten)."""
    inner: list[list[str]] = []
    line = strip_comment(line)

    def substitute(m: re.Match) -> str:
        cmd = m.group(1).split()
        if cmd[:3] in (["python", "-m", "launch"], ["PYTHON", "-m", "launch"]) and len(cmd) == 4:
            return shlex.quote(launch_path(cmd[3]) or f"<python -m launch {cmd[3]}: no such script>")
        inner.extend(commands(m.group(1)))
        return "SUBST"

    line = re.sub(r"\$\(([^()]*)\)", substitute, line)
    line = re.sub(r"\$\{?(\w+)\}?", r"\1", line)
    line = re.sub(r"<([\w.:/-]+)>", r"\1", line)  # <run_dir>: a placeholder, not a redirection
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split, lexer.commenters = True, ""
    out, current, tokens = [], [], list(lexer)
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t in OPERATORS:
            out.append(current)
            current = []
        elif t in REDIRECTS or t == "<<":
            if current and current[-1].isdigit():
                current.pop()  # the fd of 2>&1
            i += 1  # and the target
        else:
            current.append(t)
        i += 1
    out.append(current)
    out = [[w for j, w in enumerate(c) if not all(re.match(r"^[A-Za-z_]\w*=", x) for x in c[:j + 1])] for c in out]
    return [c for c in out if c] + inner


def optional_forms(argv: list[str], fragment: bool = False) -> list[list[str]]:
    """The command without its `[...]` groups and with them (brackets dropped); `...`/`…` dropped in both, except
    in a fragment, where it may stand for an option's value (`--hostfile …`)."""
    bare, full, depth = [], [], 0
    for t in argv:
        opens = len(t) - len(t.lstrip("["))
        depth += opens
        closes = min(len(t) - len(t.rstrip("]")), depth)
        core = t[opens:len(t) - closes]
        if core and (fragment or core not in ("...", "…")):
            full.append(core)
            if depth == 0:
                bare.append(core)
        depth -= closes
    return [bare, full] if bare != full else [full]


def snippet_commands(s: Snippet) -> list[list[str]]:
    return [form for line in logical_lines(s.text) for argv in commands(line)
            for form in optional_forms(argv, s.kind == "inline")]


@functools.cache
def launch_path(name: str) -> str | None:
    """What `python -m launch NAME` prints (run for real), if it is an existing path."""
    r = subprocess.run([sys.executable, "-m", "launch", name], capture_output=True, text=True, cwd="/",
                       env={**os.environ, "PYTHONSAFEPATH": "1"}, timeout=60)
    out = r.stdout.strip()
    return out if r.returncode == 0 and out and Path(out).exists() else None
