"""The web console of `vmledger serve`: server-rendered pages of the fleet, a domain, its timelines,
drift, history and the log, as of any position, updated live from the event stream.

It answers at `/` of the service, behind the same tokens and roles, and reads
through the same queries as the JSON API.  It needs the `serve` extra (and
Jinja2); `vmledger.service.app` imports it when it builds the application.
"""

__all__ = ["HANDLERS"]


def __getattr__(name: str) -> object:
    if name == "HANDLERS":
        from vmledger.console.pages import HANDLERS

        return HANDLERS
    raise AttributeError(f"module 'vmledger.console' has no attribute {name!r}")
