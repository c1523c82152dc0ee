"""Names on the Hugging Face hub (a model `org/name`, a dataset `hf://org/name`), checked before a loader fetches them.

Left alone, transformers and datasets retry an unreachable hub for about 25 s per file (huggingface_hub's backoff,
five retries), and end in a line that says nothing of how to get the files onto an offline node. `require` looks in
the local cache first, without the network; where the environment allows the network, it asks the hub once, with a
short timeout and one retry; a name it cannot get is one line (`HubError`) that names it, says what was tried and how
to download it ahead. A name found in the cache, or on a reachable hub, goes on to the loader as before.
"""
from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

from data_prep.errors import OdysseyError

HUB_NAME = re.compile(r"[\w.-]+/[\w.-]+")
PROBE_TIMEOUT_S = 5  # per try, DNS included: a silent network costs 2 tries x 5 s + 1 s, a refused connection 1 s
PROBE_TRIES = 2
# what each loader needs from the cache before it can work without the network (any one of the files)
NEEDS = {"config": ("config.json",),
         "tokenizer": ("tokenizer.json", "tokenizer_config.json"),
         "model": ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")}
_PROBE_FILE = {"model": "config.json", "dataset": "README.md"}  # a HEAD on it asks for the repo, access included
_unreachable: dict[str, str] = {}  # endpoint -> why: once it failed, later names do not wait for it again


class HubError(OdysseyError):
    """A hub name this machine cannot get: not in the cache, and the network is off, unreachable or refuses it.
    `short`: the name and why, without the advice (for a row of a plan)."""

    def __init__(self, message: str, short: str = ""):
        super().__init__(message)
        self.short = short or message


def is_hub_name(name: str) -> bool:
    """`org/name`, valid as a hub repo id, that is not a local path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not HUB_NAME.fullmatch(name) or Path(name).exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:  # `org/a..b`, `org/-x`: no hub would have it
        return False
    return True


def offline(repo_type: str = "model") -> str | None:
    """Why the loader of `repo_type` stays off the network (`HF_HUB_OFFLINE=1 keeps it off the network`), read as
    the libraries read it; None where it may use the network."""
    from huggingface_hub.constants import ENV_VARS_TRUE_VALUES

    names = ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"]
    if repo_type == "dataset" and os.environ.get("HF_DATASETS_OFFLINE") is not None:
        names = ["HF_DATASETS_OFFLINE"]  # datasets: this one, where set, overrides the hub's
    name = next((n for n in names if os.environ.get(n)), None)
    on = name and os.environ[name].upper() in ENV_VARS_TRUE_VALUES
    return f"{name}={os.environ[name]} keeps it off the network" if on else None


def cached(name: str, need: str) -> bool:
    """Whether the local cache holds what `need` (config, tokenizer, model) loads; no network."""
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(name, f), str) for f in NEEDS[need])


def require(name: str, what: str, need: str = "model") -> None:
    """Nothing where `name` is a local path or the loader can get it (cached, or from a reachable hub); else one
    line. `what` names the setting (model.path), `need` what is loaded from it (config, tokenizer, model)."""
    if not is_hub_name(name) or cached(name, need):
        return
    why = offline() or probe(name, "model")
    if why:
        raise unavailable(name, what, "model", why)


def require_dataset(name: str, what: str, revision: str | None = None) -> None:
    """Like `require` for a hub dataset read by streaming. The network alone is checked: offline, the datasets
    loader looks in its own cache at once (then `unavailable` says why it failed)."""
    if is_hub_name(name) and not offline("dataset"):
        why = probe(name, "dataset", revision)
        if why:
            raise unavailable(name, what, "dataset", why)


def probe(name: str, repo_type: str, revision: str | None = None) -> str | None:
    """None where the hub serves `name` to this machine; else why not. One HEAD request per try (huggingface_hub's
    own session, token and endpoint), a short timeout, one retry, no library backoff."""
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, RepositoryNotFoundError,
                                        RevisionNotFoundError)
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    where = constants.ENDPOINT
    if where in _unreachable:
        return _unreachable[where]
    url = hf_hub_url(name, _PROBE_FILE[repo_type], repo_type=repo_type, revision=revision)
    start, failure = time.monotonic(), None
    for attempt in range(PROBE_TRIES):
        try:
            hf_raise_for_status(_within(PROBE_TIMEOUT_S, lambda: get_session().head(
                url, headers=build_hf_headers(), allow_redirects=False, timeout=PROBE_TIMEOUT_S)))
            return None
        except EntryNotFoundError:  # the repo is there, without that file: the loader knows what it needs
            return None
        except GatedRepoError:
            return (f"{where} refuses it: a gated repo (ask for access on its page, then `hf auth login` or set "
                    f"HF_TOKEN)")
        except RevisionNotFoundError:
            return f"{where} has no revision {revision} of it"
        except RepositoryNotFoundError:
            return f"{where} has no such {repo_type} (or it is private: `hf auth login` or set HF_TOKEN)"
        except HfHubHTTPError as err:
            failure = f"HTTP {err.response.status_code}"
            if err.response.status_code < 500:
                return f"{where} answered {failure}"
        except OSError as err:  # refused, no route, no DNS, a silent network (requests' errors, TimeoutError)
            failure = type(err).__name__
        if attempt + 1 < PROBE_TRIES:
            time.sleep(1)
    _unreachable[where] = (f"{where} is unreachable ({failure}, {PROBE_TRIES} tries in "
                           f"{time.monotonic() - start:.1f} s)")
    return _unreachable[where]


def _within(seconds: float, call):
    """call() in a daemon thread, or TimeoutError after `seconds`: requests' timeout does not cover the DNS lookup,
    which waits for an unreachable name server for as long as resolv.conf says."""
    out = {}

    def run():
        try:
            out["value"] = call()
        except Exception as err:  # handed to the caller
            out["error"] = err

    worker = threading.Thread(target=run, daemon=True)  # daemon: a lookup still hanging does not hold up the exit
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeoutError(f"no answer in {seconds} s")
    if "error" in out:
        raise out["error"]
    return out["value"]


def unavailable(name: str, what: str, repo_type: str, why: str) -> HubError:
    """The one line for a hub name this machine cannot get: what was tried, and how to download it ahead."""
    from huggingface_hub.constants import HF_HUB_CACHE

    if repo_type == "dataset":
        return HubError(f"{what}: the hub dataset {name} cannot be read here: {why}; on a machine with network run "
                        f"`hf download {name} --repo-type dataset --local-dir DIR`, then read it as hf://DIR",
                        f"{name}: {why}")
    return HubError(f"{what} {name}: no local folder of that name, not in the local Hugging Face cache "
                    f"({HF_HUB_CACHE}), and {why}; on a machine with network run `hf download {name}`, then copy that "
                    f"cache here (or point HF_HOME at a copy) and set HF_HUB_OFFLINE=1, or download with --local-dir "
                    f"DIR and set {what} to DIR", f"{name}: not in the local cache, and {why}")
