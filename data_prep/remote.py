"""Remote prepared domains (s3://, gs://, oci://, … anything mosaicml-streaming can upload to and download from).

Only streaming's own uploader/downloader are used, so every remote it supports works here, and `S3_ENDPOINT_URL`
points S3 at any compatible server. A domain is uploaded shards first, split indexes next and `manifest.json` last:
a remote domain without a manifest is an interrupted upload and is never read.
"""
from __future__ import annotations

import os
import tempfile
import urllib.parse
from pathlib import Path


def is_remote(path: str | Path) -> bool:
    return urllib.parse.urlparse(str(path)).scheme not in ("", "file")


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def _uploader(local: Path, remote: str):
    from streaming.base.storage.upload import CloudUploader

    return CloudUploader.get(out=(str(local), remote), keep_local=True, exist_ok=True)


def upload_domain(local: Path, remote: str) -> None:
    """Upload a prepared domain folder: data files, then each split's index.json, then manifest.json."""
    up = _uploader(local, remote)
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    shards = [f for f in files if not f.endswith(("index.json", "manifest.json"))]
    for name in shards + [f for f in files if f.endswith("index.json")] + ["manifest.json"]:
        up.upload_file(name)


def remote_has(remote_dir: str, name: str) -> bool:
    up = _uploader(Path(tempfile.mkdtemp(prefix="odyssey-ls-")), remote_dir)
    return any(key.endswith("/" + name) or key == name for key in (up.list_objects(name) or []))


def download(remote_file: str, local_file: Path, timeout: float = 120) -> Path:
    from streaming.base.storage.download import CloudDownloader

    local_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = local_file.with_name(f".{local_file.name}.{os.getpid()}.tmp")
    CloudDownloader.direct_download(remote_file, str(tmp), timeout)
    tmp.replace(local_file)
    return local_file
