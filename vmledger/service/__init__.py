"""`vmledger serve`: the ledger as an authenticated HTTP service (Litestar on uvicorn).

The modules that need the `serve` extra (litestar, uvicorn,
prometheus-client) are imported on first use, so the CLI and the library
work without it.
"""

from typing import Any

__all__ = ["Service", "create_app", "serve", "Role", "Token", "TokenStore"]


def __getattr__(name: str) -> Any:
    if name in ("Service", "create_app"):
        from vmledger.service import app

        return getattr(app, name)
    if name == "serve":
        from vmledger.service.run import serve

        return serve
    if name in ("Role", "Token", "TokenStore"):
        from vmledger.service import tokens

        return getattr(tokens, name)
    raise AttributeError(f"module 'vmledger.service' has no attribute {name!r}")
