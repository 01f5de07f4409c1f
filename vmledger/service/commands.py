"""The `serve` and `token` commands of the CLI, kept beside the service they run."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_commands", "run_command", "COMMANDS"]

COMMANDS = ("serve", "token")
#: The port `vmledger serve` listens on by default.
DEFAULT_PORT = 8421


def add_commands(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add `serve` and `token add|list|revoke` to the CLI's subparsers."""
    text = "serve the ledger over HTTP: JSON API, event stream, bearer tokens, metrics"
    p = sub.add_parser("serve", help=text, description=text + " (stops gracefully on SIGTERM)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help="port to listen on, 0 for any free one (default %(default)s)")
    p.add_argument("--certfile", help="serve HTTPS with this PEM certificate (chain)")
    p.add_argument("--keyfile", help="the PEM private key of --certfile")
    p.add_argument("--root-path", default="", metavar="PREFIX",
                   help="answer under this path prefix, e.g. /ledger, directly or behind a proxy that strips it or not"
                        " (the console's links carry it)")
    p.add_argument("--heartbeat", type=float, default=15.0, metavar="SECONDS",
                   help="seconds between heartbeat comments on an idle event stream (default %(default)s)")
    text = "manage the bearer tokens of the HTTP service (stored hashed in the ledger's database)"
    token = sub.add_parser("token", help=text, description=text)
    actions = token.add_subparsers(dest="token_command", required=True, metavar="ACTION", parser_class=parser_class)
    a = actions.add_parser("add", help="create a token and print it once, alone on stdout")
    a.add_argument("name", help="the token's name: the principal recorded for its requests")
    a.add_argument("--role", required=True, choices=["reader", "operator", "admin"],
                   help="reader: reads and the event stream; operator: + define, start, stop, set, observe, adopt; "
                        "admin: + rebuild, import, verify, export, tokens, sim")
    actions.add_parser("list", help="list the tokens: name, role, creation time")
    r = actions.add_parser("revoke", help="revoke a token: refused from its next request on")
    r.add_argument("name")


async def run_command(args: argparse.Namespace) -> int:
    """Run `serve` or a `token` action on the ledger of `--db`; return the exit code."""
    import vmledger
    from vmledger.eventstore.errors import InvalidRequestError
    from vmledger.service.tokens import TokenStore

    if args.command == "serve":
        try:
            from vmledger.service.run import serve
        except ImportError as e:
            raise InvalidRequestError(f"vmledger serve needs the serve extra ({e}): pip install 'vmledger[serve]'") from e

        return await serve(args.db, hypervisor=args.hypervisor, hypervisor_timeout=args.timeout, host=args.host,
                           port=args.port, certfile=args.certfile, keyfile=args.keyfile, heartbeat=args.heartbeat,
                           root_path=args.root_path)
    # As every command but those that make a ledger: a mistyped --db is told, not made a new ledger.
    async with vmledger.open(args.db, hypervisor=args.hypervisor, hypervisor_timeout=args.timeout,
                             create=False) as ledger:
        tokens = TokenStore(args.db, ledger.log.fetch_all)
        if args.token_command == "add":
            print(await tokens.add(args.name, args.role))
        elif args.token_command == "list":
            for t in await tokens.tokens():
                print(f"{t.name:<24} {t.role.value:<8} {t.created_at}")
        else:
            await tokens.revoke(args.name)
            print(f"revoked {args.name}")
    return 0
