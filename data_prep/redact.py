"""Secrets kept out of logs, params, tags and written configs: one home for what counts as a secret.

A secret is the value of an environment variable whose name has a word KEY, SECRET, TOKEN, PASSWORD (or PASSWD,
CREDENTIAL[S]) in it (`AWS_SECRET_ACCESS_KEY`, `HF_TOKEN`, `MLFLOW_TRACKING_PASSWORD`; not `TOKENIZERS_PARALLELISM`),
and the userinfo part of any URI (`https://user:pass@host`), also once it moved into MLFLOW_TRACKING_USERNAME/PASSWORD.
`redact` replaces them by value wherever they appear.
It lives in the lowest package so that every layer (and the launch scripts, via `python -m data_prep.redact`) uses it.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from data_prep import console

SECRET_WORDS = {"KEY", "SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL", "CREDENTIALS", "APIKEY"}
MIN_SECRET_LEN = 4  # shorter values ("1", "yes") would blank out ordinary text
MASK = "***"
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s'\"]+)@")


def is_secret_name(name: str) -> bool:
    """An environment variable or config key that holds a secret, judged by its words."""
    return any(word in SECRET_WORDS for word in re.split(r"[^A-Za-z0-9]+", name.upper()))


def is_secret_key(key: str) -> bool:
    """A config key that names a secret by its last word (`hf_token`, `api_key`; not `eval.token_stats`)."""
    words = re.split(r"[^A-Za-z0-9]+", key.upper())
    return words[-1] in SECRET_WORDS


def has_userinfo(value: str) -> bool:
    return bool(_USERINFO.search(value))


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Every secret value of the environment: named ones, the user and password of a URI in any variable (a token is
    often the user part), and the tracking user a URI's credentials were moved to."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if is_secret_name(k) or k == "MLFLOW_TRACKING_USERNAME"}
    for v in env.values():
        for m in _USERINFO.finditer(v):
            values.update(unquote(part) for part in m["userinfo"].split(":", 1))
    return sorted((v for v in values if len(v) >= MIN_SECRET_LEN), key=len, reverse=True)  # longest first


def redact_tree(tree):
    """A config tree (dicts, lists, scalars) with secret keys masked and secret values redacted: for MLflow params,
    and for writing as YAML (masking after the dump could leave `***`, which YAML reads as an alias)."""
    secrets = secret_values()

    def walk(node):
        if isinstance(node, dict):
            return {k: MASK if is_secret_key(str(k)) and v else walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return _mask(node, secrets) if isinstance(node, str) else node

    return walk(tree)


def redact(text: str, secrets: list[str] | None = None) -> str:
    """`text` with every secret value (of the environment, or `secrets`) and every URI's userinfo masked."""
    return _mask(text, secret_values() if secrets is None else secrets)


def _mask(text: str, secrets: list[str]) -> str:
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    for value in secrets:
        text = text.replace(value, MASK)
    return text


def split_userinfo(uri: str) -> tuple[str, str | None, str | None]:
    """(the URI without userinfo, user, password): credentials travel in the environment, never in a URI that is
    printed or written down."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), unquote(user) or None, unquote(password) or None


def write_env_file(path: Path, environ: dict[str, str] | None = None) -> str:
    """Move the secrets of the environment into `path` (JSON, mode 0600) for ranks to read at start
    (`load_env_file`), so a launcher never puts them on a command line or into its log. Returns shell lines that
    unset them (and put a tracking URI's credentials into the file too) for the launcher's own environment."""
    env = dict(os.environ if environ is None else environ)
    secret = {k: v for k, v in env.items() if is_secret_name(k) or has_userinfo(v)}  # a proxy URL with a password too
    lines = []
    uri = secret.pop("MLFLOW_TRACKING_URI", None)
    if uri:  # the ranks use the URI without its credentials, and MLflow's own variables for them
        clean, user, password = split_userinfo(uri)
        secret.update({k: v for k, v in (("MLFLOW_TRACKING_USERNAME", user), ("MLFLOW_TRACKING_PASSWORD",
                                                                              password)) if v})
        lines.append(f"export MLFLOW_TRACKING_URI={shlex.quote(clean)}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(secret, f)
    if secret:
        lines.insert(0, "unset " + " ".join(sorted(secret)))
    return "\n".join(lines)


def load_env_file(path: str | None) -> None:
    """The secrets `write_env_file` kept for this job, into this rank's environment (set values win)."""
    if not path:
        return
    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        console.error(f"the launch's secrets file {path} cannot be read ({getattr(err, 'strerror', None) or err})"
                      f"; is the run folder on a filesystem every node shares?")
        raise SystemExit(2) from None
    for k, v in saved.items():
        os.environ.setdefault(k, v)


def main() -> int:
    """`python -m data_prep.redact`: a filter, stdin to stdout with secrets masked line by line (launch scripts pipe
    their logs through it). `--env-file PATH`: write_env_file, printing the shell lines to eval."""
    if sys.argv[1:2] == ["--env-file"]:
        console.out(write_env_file(Path(sys.argv[2])))
        return 0
    load_env_file(os.environ.get("ODYSSEY_SECRETS_FILE"))  # a launcher unset them here and kept them in that file
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launch it filters decides when to stop; the filter reads on
    sys.stdin.reconfigure(errors="replace")
    secrets = secret_values()
    for line in sys.stdin:
        sys.stdout.write(_mask(line, secrets))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
