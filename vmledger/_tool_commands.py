"""The `schema` and `plot` commands of the CLI, for consumers and replay tools."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["COMMANDS", "add_commands", "print_schema", "plot"]

COMMANDS = ("schema", "plot")


def add_commands(sub: Any) -> None:
    """Add `schema [TYPE]` and `plot NAME PROPERTY -o FILE` to the CLI's subparsers."""
    text = "print the JSON Schema (draft 2020-12) of an event type's stored data, or of every type and version"
    p = sub.add_parser("schema", help=text, description=text + "; eventstore/schemas/ holds them as files")
    p.add_argument("type", nargs="?", metavar="TYPE", help="an event type, e.g. MemoryChangeApplied (default: all, "
                   "as one JSON object keyed TYPE.vN)")
    p.add_argument("--schema-version", type=int, metavar="N", help="that version of TYPE (default: its current one)")
    text = "draw a property's requested, persistent and live values over time, each request's outcome marked"
    p = sub.add_parser("plot", help=text, description=text + " (needs matplotlib: pip install 'vmledger[plot]')")
    p.add_argument("name")
    p.add_argument("property", help="a catalogue property, or media:DEV")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the image to write: FILE.svg or FILE.png")


def print_schema(args: argparse.Namespace) -> int:
    """Print the schema `args` names, or every schema; return the exit code."""
    from vmledger.eventstore import schema
    from vmledger.eventstore.errors import InvalidRequestError

    if args.type is None:
        if args.schema_version is not None:
            raise InvalidRequestError("--schema-version needs a TYPE")
        found: Any = {f"{name}.v{v}": schema.schema(name, v) for name, v in schema.versions()}
    else:
        found = schema.schema(args.type, args.schema_version)
    print(json.dumps(found, indent=2, ensure_ascii=False))
    return 0


async def plot(ledger: Any, args: argparse.Namespace) -> None:
    """Draw the plot `args` asks for into its output file, and say so."""
    from vmledger import _plot

    _plot.render(await _plot.timeline(ledger, args.name, args.property), args.output)
    print(f"wrote {args.output}")
