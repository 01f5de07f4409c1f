"""The console's static files, served under names that carry a hash of their content.

A page names `console.3f2a1b9c0d.js`, never `console.js`: a new release
changes the name, so a browser may keep a file for a year and still never
run an old script against a new page.
"""

from __future__ import annotations

import hashlib
import mimetypes
from importlib import resources

__all__ = ["STATIC", "asset_url", "static_file"]

_TYPES = {".js": "text/javascript", ".css": "text/css"}  # Litestar adds "; charset=utf-8"


def _hashed(name: str, body: bytes) -> str:
    stem, dot, ext = name.rpartition(".")
    return f"{stem}.{hashlib.sha256(body).hexdigest()[:12]}{dot}{ext}"


def _load() -> dict[str, tuple[str, bytes]]:
    files = {}
    for entry in resources.files("vmledger.console").joinpath("static").iterdir():
        if entry.name.endswith((".js", ".css")):
            files[entry.name] = (_hashed(entry.name, entry.read_bytes()), entry.read_bytes())
    return files


#: Each static file by its plain name: (its cache-busting name, its bytes).
STATIC = _load()
_BY_HASHED = {hashed: (plain, body) for plain, (hashed, body) in STATIC.items()}


def asset_url(root: str, name: str) -> str:
    """Return the URL of the static file `name` under the console's root path.

    Raises:
        KeyError: the package ships no such file.
    """
    return f"{root}/static/{STATIC[name][0]}"


def static_file(hashed: str) -> tuple[bytes, str] | None:
    """Return the bytes and media type of a static file by its cache-busting name, or None."""
    found = _BY_HASHED.get(hashed)
    if found is None:
        return None
    plain, body = found
    ext = "." + plain.rpartition(".")[2]
    return body, _TYPES.get(ext) or mimetypes.guess_type(plain)[0] or "application/octet-stream"
