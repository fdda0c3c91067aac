"""Fetch a public corpus: resumable HTTP download, checksum, unpack."""

import hashlib
import logging
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from .errors import GmptlError

log = logging.getLogger(__name__)

# The RAVDESS speech part, as published on Zenodo (record 1188976), with the md5 Zenodo lists for it.
CORPORA = {
    "ravdess": {
        "url": "https://zenodo.org/records/1188976/files/Audio_Speech_Actors_01-24.zip?download=1",
        "file": "Audio_Speech_Actors_01-24.zip",
        "md5": "bc696df654c87fed845eb13823edef8a",
        "licence": "CC BY-NC-SA 4.0 (Livingstone & Russo 2018, PLoS ONE 13(5): e0196391)",
    },
}


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, target: Path, timeout: float = 60.0) -> None:
    """Download ``url`` to ``target``, continuing a ``target.part`` left by a broken transfer."""
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the part already holds everything
            part.replace(target)
            return
        raise GmptlError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise GmptlError(f"{url}: cannot connect ({getattr(e, 'reason', e)})") from None
    with response:
        resumed = response.status == 206
        if have and not resumed:
            log.info("the server does not resume transfers: starting again")
            have = 0
        total = response.headers.get("content-length")
        total = int(total) + have if total else None
        with open(part, "ab" if resumed else "wb") as f, \
                tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=target.name, disable=None) as bar:
            try:
                for block in iter(lambda: response.read(1 << 16), b""):
                    f.write(block)
                    bar.update(len(block))
            except (OSError, urllib.error.URLError) as e:
                raise GmptlError(f"{url}: transfer broke off after {f.tell()} bytes ({e}); "
                                 "run the same command again to resume") from None
    if total is not None and part.stat().st_size < total:
        raise GmptlError(f"{url}: transfer broke off after {part.stat().st_size} of {total} bytes; "
                         "run the same command again to resume")
    part.replace(target)


def download(name: str, dest, url: str | None = None, md5: str | None = None) -> Path:
    """Fetch, verify and unpack corpus ``name`` into ``dest``; returns the corpus root."""
    if name not in CORPORA:
        raise GmptlError(f"unknown corpus '{name}' to download (known: {', '.join(CORPORA)}); "
                         "the others need a licence agreement: get them from their publishers")
    spec, dest = CORPORA[name], Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / spec["file"]
    expected = md5 or spec["md5"]
    if not archive.exists():
        fetch(url or spec["url"], archive)
    got = file_digest(archive, "md5")
    if got != expected:
        bad = archive.with_name(archive.name + ".bad")
        archive.replace(bad)
        raise GmptlError(f"{archive}: md5 {got} differs from the published {expected}; moved to {bad.name}, "
                         "run again to download anew")
    with zipfile.ZipFile(archive) as z:
        members = [m for m in z.namelist() if not m.endswith("/")]
        for member in tqdm(members, desc="unpacking", unit="file", disable=None):
            target = (dest / member).resolve()
            if dest.resolve() not in target.parents:
                raise GmptlError(f"{archive}: member {member!r} would land outside {dest}")
            if target.exists():  # unpacked by an earlier run (files land whole, by rename)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            with z.open(member) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)
            tmp.replace(target)
    log.info("%s: %d files under %s; licence %s", name, len(members), dest, spec["licence"])
    return dest
