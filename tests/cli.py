"""`odyssey ARGS` inside the test process: the exit code, stdout and stderr a shell would see, without the ~6 s a
new interpreter spends importing torch, transformers, deepspeed and streaming before it reads its first argument.

For checks of what the command answers (a bad input's one line and exit 2, a plan, a prep summary). A test of what
only a fresh process shows starts one: the launcher and its ranks, the installed entry point, the working
directory's shadowing folders, an environment variable a library reads when it is imported (HF_HUB_OFFLINE)."""
from __future__ import annotations

import io
import os
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path


def odyssey(args: list, cwd: str | Path | None = None, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    """`odyssey *args` run by odyssey.cli.main in `cwd` with `env` added."""
    from odyssey.cli import main

    return in_process(main, args, cwd, env)


def in_process(main, args: list, cwd: str | Path | None = None, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess:
    """`main(args)` as a command: its exit code, stdout and stderr. The working directory and environment are as
    they were afterwards (odyssey's main sets defaults in os.environ for the ranks it would start)."""
    argv = [str(a) for a in args]
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.update(env or {})
        if cwd is not None:
            os.chdir(cwd)
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as stop:  # argparse's usage errors
                code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess([main.__module__, *argv], code, out.getvalue(), err.getvalue())
