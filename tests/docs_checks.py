"""The checks that hold what tests/docs_blocks.py takes out of the docs against the real thing: each command
against its program's own parser (deepspeed's launcher, torchrun, `odyssey`, a module's main), each YAML block
against the config model its keys name, and each repo path against the tree. Conventions: tests/docs_blocks.py."""
from __future__ import annotations

import argparse
import ast
import functools
import importlib.util
import io
import os
import re
import runpy
import shlex
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import yaml

from tests import docs_blocks
from tests.docs_blocks import (EXTERNAL, PACKAGES, PLACEHOLDER_KEYS, PYTHONS, ROOT, SCRIPT_ARGS, TOP_DIRS, TOP_FILES,
                               Snippet, docstring_snippets, fences, launch_path, rel, snippet_commands)


# ---------------------------------------------------------------- parsers


class _Parsed(Exception):
    """Raised instead of parsing: the parser a module's main() built, and which parse method it called."""

    def __init__(self, parser: argparse.ArgumentParser, method: str):
        super().__init__(method)
        self.parser, self.method = parser, method


def capture_parser(run) -> tuple[argparse.ArgumentParser, str] | None:
    """The argparse parser `run()` builds, taken at its first parse call (nothing after it runs), or None when it
    parses nothing. This is how the tests get the parsers that main functions build inline."""
    methods = ("parse_args", "parse_known_args", "parse_intermixed_args", "parse_known_intermixed_args")
    saved = {m: getattr(argparse.ArgumentParser, m) for m in methods}

    def stopper(method):
        def stop(self, *args, **kwargs):
            raise _Parsed(self, method)
        return stop

    for m in methods:
        setattr(argparse.ArgumentParser, m, stopper(m))
    argv = sys.argv
    try:
        sys.argv = ["docs-test"]
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module was imported before
            run()
    except _Parsed as parsed:
        return parsed.parser, parsed.method
    except SystemExit:
        return None
    finally:
        sys.argv = argv
        for m, f in saved.items():
            setattr(argparse.ArgumentParser, m, f)
    return None


def parse_error(parse, label: str) -> tuple[object, str | None]:
    """(result, None), or (None, "label: error: …") when `parse()` exits non-zero as argparse does."""
    err = io.StringIO()
    try:
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            return parse(), None
    except SystemExit as stop:
        if stop.code in (0, None):  # --help
            return None, None
        lines = [ln for ln in err.getvalue().splitlines() if "error:" in ln] or [f"exit {stop.code}"]
        return None, f"{label}: error: {lines[-1].split('error:', 1)[-1].strip()}"


def uses_argparse(source: Path) -> bool:
    """The file, or a project module it imports, builds an argparse parser (its main may take it from elsewhere, as
    `python -m trainer.train` takes `odyssey train`'s). A main without one is not run: it would do its work."""
    tree = ast.parse(source.read_text())
    sources = [source] + [Path(spec.origin) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                          and node.module and node.module.split(".")[0] in PACKAGES
                          and (spec := importlib.util.find_spec(node.module)) and spec.origin]
    return any("import argparse" in p.read_text() for p in sources if p.suffix == ".py")


@functools.cache
def module_parser(module: str) -> tuple[argparse.ArgumentParser, str] | None:
    """The parser `python -m module` reads its arguments with, for this project's modules that parse arguments."""
    spec = importlib.util.find_spec(module)
    main = importlib.util.find_spec(module + ".__main__") if spec.submodule_search_locations else spec
    if module.split(".")[0] not in PACKAGES or main is None or not uses_argparse(Path(main.origin)):
        return None
    return capture_parser(lambda: runpy.run_module(module, run_name="__main__"))


@functools.cache
def script_parser(path: Path) -> tuple[argparse.ArgumentParser, str] | None:
    if path.suffix != ".py" or not uses_argparse(path):
        return None
    return capture_parser(lambda: runpy.run_path(str(path), run_name="__main__"))


@functools.cache
def launcher_parser(name: str) -> argparse.ArgumentParser:
    if name == "deepspeed":
        from deepspeed.launcher import runner

        return capture_parser(lambda: runner.parse_args([]))[0]
    from torch.distributed.run import get_args_parser

    return get_args_parser()


@functools.cache
def make_targets() -> frozenset[str]:
    return frozenset(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), flags=re.M))


# ---------------------------------------------------------------- command checks


def unknown_options(parser: argparse.ArgumentParser, argv: list[str], label: str) -> list[str]:
    """A fragment's check: every `--option` it names is one of the parser's."""
    known = parser._option_string_actions
    return [f"{label}: no option {t.split('=')[0]}" for t in argv
            if t.startswith("-") and len(t) > 1 and not re.match(r"^-[\d.]", t) and t.split("=")[0] not in known]


def split_launcher(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], str | None, list[str]]:
    """(the launcher's own options, the script or module, its arguments), by the launcher's option arities."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        action = parser._option_string_actions.get(argv[i].split("=")[0])
        i += 1 if action is None or action.nargs == 0 or "=" in argv[i] else 2
    return argv[:i], (argv[i] if i < len(argv) else None), argv[i + 1:]


def check_overrides(ns: argparse.Namespace, label: str) -> list[str]:
    """dotted.key=value overrides of a run config: keys and types as the config model takes them."""
    from trainer.config import ConfigError, apply_overrides, config_from_dict

    given = [o for o in getattr(ns, "overrides", None) or [] if o.split("=")[0] not in PLACEHOLDER_KEYS]
    try:
        config_from_dict(apply_overrides(minimal("run"), given))
    except ConfigError as err:
        return [f"{label}: override: {err}"]
    return []


def check_parsed(found: tuple[argparse.ArgumentParser, str] | None, argv: list[str], fragment: bool,
                 label: str) -> list[str]:
    if found is None:
        return []
    parser, method = found
    if fragment:
        return unknown_options(parser, argv, label)
    ns, err = parse_error(lambda: getattr(parser, method)(argv), label)
    return [err] if err else check_overrides(ns, label) if ns is not None else []


def check_odyssey(argv: list[str], fragment: bool) -> list[str]:
    from odyssey.cli import build_parser, parse_args

    if not fragment:
        ns, err = parse_error(lambda: parse_args(argv), "odyssey")
        return [err] if err else check_overrides(ns, "odyssey") if ns is not None else []
    parser = build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    words = [w for w in argv if not w.startswith("-")]
    if not words:
        return unknown_options(parser, argv, "odyssey")
    if words[0] not in verbs:
        return [f"odyssey: no verb {words[0]!r} (verbs: {', '.join(verbs)})"]
    return unknown_options(verbs[words[0]], [w for w in argv if w != words[0]], f"odyssey {words[0]}")


def check_module(module: str, argv: list[str], fragment: bool) -> list[str]:
    """`python -m module argv`: the module resolves (importlib), and its own parser takes argv."""
    try:
        spec = importlib.util.find_spec(module)
    except ImportError:
        spec = None
    if spec is None or (spec.submodule_search_locations and importlib.util.find_spec(module + ".__main__") is None):
        return [f"python -m {module}: no such module"]
    if module == "odyssey":
        return check_odyssey(argv, fragment)
    if module == "launch":
        names = [a for a in argv if not a.startswith("-") and not re.fullmatch(r"[A-Z_]+", a)]
        return [f"python -m launch {n}: prints no existing path" for n in names[:1] if launch_path(n) is None]
    return check_parsed(module_parser(module), argv, fragment, f"python -m {module}")


def check_script(path: str, argv: list[str], fragment: bool, direct: bool) -> list[str]:
    """A script the docs run: it exists (executable when run directly), and what it hands on is checked."""
    file = Path(path) if Path(path).is_absolute() else ROOT / path
    if not file.is_file():
        return [f"{path}: no such file in the repo"]
    if direct and not os.access(file, os.X_OK):
        return [f"{path}: not executable, but the docs run it directly"]
    key = rel(file.resolve()) if file.resolve().is_relative_to(ROOT) else path
    if key in SCRIPT_ARGS:
        module, to_argv = SCRIPT_ARGS[key]
        return [] if fragment and not argv else check_module(module, to_argv(argv), fragment)
    return check_parsed(script_parser(file), argv, fragment, f"python {path}")


def check_python(argv: list[str], fragment: bool) -> list[str]:
    i = 0
    while i < len(argv) and argv[i] in ("-u", "-P", "-B", "-E", "-I", "-O", "-s", "-W", "-X"):
        i += 2 if argv[i] in ("-W", "-X") else 1
    rest = argv[i:]
    if not rest or rest[0] in ("-", "-c"):
        return []  # stdin or inline code: nothing of ours to parse
    if rest[0] == "-m":
        return check_module(rest[1], rest[2:], fragment) if len(rest) > 1 else (
            [] if fragment else ["python -m: no module"])
    return check_script(rest[0], rest[1:], fragment, direct=False)


def check_launcher(name: str, argv: list[str], fragment: bool) -> list[str]:
    """deepspeed and torchrun: the launcher's own parser, then the module or script it starts."""
    parser = launcher_parser(name)
    script_attr, args_attr = ("user_script", "user_args") if name == "deepspeed" else (
        "training_script", "training_script_args")
    if fragment:
        own, script, rest = split_launcher(parser, argv)
        module = any(o in ("--module", "-m") for o in own)
        problems = unknown_options(parser, own, name)
        if script in (None, "…", "...") or problems:
            return problems
    else:
        ns, err = parse_error(lambda: parser.parse_args(argv), name)
        if err or ns is None:
            return [err] if err else []
        module, script, rest = ns.module, getattr(ns, script_attr), getattr(ns, args_attr)
    return check_module(script, rest, fragment) if module else check_script(script, rest, fragment, direct=False)


def check_sbatch(argv: list[str], fragment: bool) -> list[str]:
    """sbatch's own options need a SLURM (tests/launch/test_docs_sbatch.py); here: the script and its arguments."""
    words = [i for i, a in enumerate(argv) if not a.startswith("-") and a not in ("…", "...")]
    return check_script(argv[words[0]], argv[words[0] + 1:], fragment, direct=False) if words else []


def check_mlflow(argv: list[str], fragment: bool) -> list[str]:
    import click

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SQLAlchemy deprecations inside mlflow's import, not ours to fix
        from mlflow.cli import cli

    command = cli.get_command(None, argv[0]) if argv else None
    if command is None:
        return [f"mlflow: no command {argv[:1]}"]
    try:
        command.make_context(argv[0], argv[1:])
    except click.ClickException as err:
        return [f"mlflow {argv[0]}: error: {err.format_message()}"]
    return []


def check_make(argv: list[str], fragment: bool) -> list[str]:
    return [f"make: no target {t!r} in the Makefile" for t in argv if not t.startswith("-") and "=" not in t
            and t not in make_targets()]


PROGRAMS = {"odyssey": check_odyssey, "deepspeed": lambda a, f: check_launcher("deepspeed", a, f),
            "torchrun": lambda a, f: check_launcher("torchrun", a, f), "sbatch": check_sbatch,
            "mlflow": check_mlflow, "make": check_make}
assert set(PROGRAMS) == docs_blocks.PROGRAMS, "a program the docs show has no check, or the reverse"


def check_command(argv: list[str], fragment: bool = False) -> list[str]:
    """Problems of one command, each a line naming the program and what it refused; [] when it passes."""
    prog, args = argv[0], argv[1:]
    if prog.startswith(".venv/bin/"):
        prog = prog[len(".venv/bin/"):]
        if not (Path(sys.executable).parent / prog).exists():
            return [f"{argv[0]}: not installed in the venv"]
    if prog in PYTHONS:
        return check_python(args, fragment)
    if prog in PROGRAMS:
        return PROGRAMS[prog](args, fragment)
    if prog in EXTERNAL:
        return []
    if prog.split("/")[0] in TOP_DIRS:
        return check_script(prog, args, fragment, direct=True)
    return [f"{prog}: no check for this program (add one to PROGRAMS, or it to EXTERNAL with why)"]


def check_shell(s: Snippet) -> list[str]:
    fragment = s.kind == "inline"
    return [f"`{shlex.join(argv)}`: {p}" for argv in snippet_commands(s) for p in check_command(argv, fragment)]


# ---------------------------------------------------------------- YAML


def minimal(kind: str) -> dict:
    """The smallest valid config of a kind, for a fragment to be merged into."""
    if kind == "run":
        return {"model": {"path": "MODEL"}, "data": {"streams": [{"name": "d", "path": "D"}]}}
    return {"name": "s", "out_dir": "OUT", "domains": [{"name": "a", "path": "A"}, {"name": "b", "path": "B"}]}


def merged(base: dict, block: dict) -> dict:
    """`block` over `base`: sections merge, anything else (lists included) is replaced."""
    out = dict(base)
    for k, v in block.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def study_tree(block: dict) -> dict:
    base = minimal("study")
    if "model" not in block and "models" not in block:
        base["model"] = {"path": "MODEL"}
        if "reference" not in block:
            base["reference"] = {"name": "ref", "path": "REF"}
    return merged(base, block)


def config_kind(tree: dict) -> tuple[str, object, dict] | None:
    """(what, model, the tree to validate) by the keys a block has, or None when no config takes it."""
    from data_prep.cli import PrepFile
    from data_prep.tasks import TaskFile
    from study.config import StudyCfg
    from study.task_config import TaskStudyCfg
    from trainer.config import Config
    from trainer.task_matrix import MatrixCfg

    keys = set(tree)
    if tree.get("kind") == "tasks":
        return "task study", TaskStudyCfg, tree
    if {"models", "tests"} <= keys:
        return "evaluate-tasks matrix", MatrixCfg, tree
    if "tasks" in keys:
        return "task prep file", TaskFile, tree
    if "domains" in keys and keys & {"name", "out_dir", "model", "models", "reference", "train", "nproc", "prep"}:
        return "study", StudyCfg, study_tree(tree)
    if "domains" in keys:
        return "prep file", PrepFile, tree
    if keys and keys <= set(Config.model_fields):
        return "run config", Config, merged(minimal("run"), tree)
    return None


def check_yaml(s: Snippet) -> list[str]:
    """A YAML block validates as the config its keys name; a docstring mapping no config takes is not a config."""
    from data_prep.config import ConfigError, validate

    try:
        tree = yaml.safe_load(s.text)
    except yaml.YAMLError as err:
        return [] if s.kind == "yaml-docstring" else [f"not valid YAML: {str(err).splitlines()[0]}"]
    kind = config_kind(tree) if isinstance(tree, dict) else None
    if kind is None:
        return [] if s.kind == "yaml-docstring" else [
            f"no config model takes a block with keys {sorted(tree) if isinstance(tree, dict) else tree!r}: "
            "teach tests/docs_blocks.py:config_kind, or mark it <!-- docs-test: skip (why) -->"]
    what, model, full = kind
    try:
        validate(model, full, what)
    except ConfigError as err:
        return [f"{what}: {err}"]
    return []


# ---------------------------------------------------------------- repo paths

PATH = re.compile(r"(?<![\w./$<>{}~:-])((?:%s)/[\w./<>*-]*|(?:%s)\b)" % (
    "|".join(TOP_DIRS), "|".join(re.escape(f) for f in TOP_FILES)))
DOC_NAME = re.compile(r"(?<![\w/.-])([A-Z][A-Z_]+\.md)\b")
DEFINED = re.compile(r"`((?:%s)/[\w/]+\.py): (\w+)" % "|".join(TOP_DIRS))


@functools.cache
def output_folders() -> tuple[str, ...]:
    """Where the shipped studies write (their out_dir): named in the docs, made by a run, not in the repo."""
    return tuple(str(yaml.safe_load(p.read_text()).get("out_dir", "")).rstrip("/") + "/"
                 for p in (ROOT / "studies").glob("*.yaml"))


def repo_paths(text: str) -> set[str]:
    out = set()
    for m in PATH.finditer(text):
        path = m.group(1).rstrip(".")
        top, _, rest = path.partition("/")
        if path.startswith(output_folders()) or (top in PACKAGES[:5] and rest and not rest.endswith(".py")):
            continue
        out.add(path)
    return out


def missing_paths(text: str, here: Path = ROOT) -> list[str]:
    """The repo paths, doc names (PREP.md) and `file.py: name` definitions a text names that do not exist."""
    problems = []
    for path in sorted(repo_paths(text)):
        pattern = re.sub(r"<[^>]*>", "*", path)
        if not (any(ROOT.glob(pattern)) if "*" in pattern else (ROOT / path).exists()):
            problems.append(f"{path}: not in the repo")
    for name in sorted(set(DOC_NAME.findall(text))):
        if not any((d / name).is_file() for d in (ROOT / "docs", ROOT, here)):
            problems.append(f"{name}: no such doc (docs/{name})")
    for path, name in sorted(set(DEFINED.findall(text))):
        source = ROOT / path
        if source.is_file() and not re.search(rf"^\s*(def|class) {name}\b|^{name}\s*[:=]", source.read_text(),
                                              flags=re.M):
            problems.append(f"{path}: defines no {name}")
    return problems


def doc_text_for_paths(path: Path) -> str:
    """A doc's text without its YAML blocks: paths in a config example are placeholders, not repo paths."""
    text = path.read_text()
    for _, lang, body, _ in fences(text):
        if lang in ("yaml", "yml"):
            text = text.replace(body, "")
    return text


def help_texts() -> str:
    """Every description and help string of the `odyssey` parser and its verbs: a help text is docs too."""
    from odyssey.cli import build_parser

    texts, todo = [], [build_parser()]
    while todo:
        parser = todo.pop()
        texts += [parser.description or ""] + [a.help or "" for a in parser._actions]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += list(action.choices.values())
    return "\n".join(texts)


def launch_names(text: str) -> set[str]:
    """Every `python -m launch NAME` a text shows, in a command or in prose (NAME itself is a placeholder)."""
    return {n for n in re.findall(r"python3? -m launch ([\w./-]+)", text) if not re.fullmatch(r"[A-Z_]+", n)}


def docstring_for_paths(path: Path) -> str:
    """A module docstring without its config examples (their paths are placeholders)."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    for s in docstring_snippets(path):
        tree = yaml.safe_load(s.text) if s.kind == "yaml-docstring" and _loads(s.text) else None
        if isinstance(tree, dict) and config_kind(tree):
            doc = doc.replace("\n".join("    " + ln for ln in s.text.splitlines()), "")
    return doc


def _loads(text: str) -> bool:
    try:
        yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    return True
