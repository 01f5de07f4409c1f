"""An undefined domain's history stays readable by name, in the CLI and the API (issue 13)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

import vmledger
from vmledger.adapters.simulated import SimulatedHypervisor
from vmledger.cli import main


def test_history_of_an_undefined_domain_by_name_in_the_cli(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """`history web` after `undefine web` lists web's requests; a name no domain bore is still unknown (exit 2)."""
    db = f"sqlite:///{tmp_path}/ledger.db"

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--db", db, *args])
        out, err = capsys.readouterr()
        return code, out, err

    define = ("define", "web", "--type", "pv", "--memory", "1GiB", "--max-memory", "4GiB", "--vcpus", "2",
              "--max-vcpus", "4")
    assert run(*define)[0] == 0
    code, out, _ = run("set", "web", "vcpus", "3", "--request-id", "r-old", "--json")
    assert (code, run("undefine", "web")[0]) == (0, 0)
    code, out, err = run("history", "web", "--json")
    unknown = run("history", "wbe")
    assert (code, [(r["request_id"], r["domain"], r["requested"]) for r in json.loads(out)], err) == (
        0, [("r-old", "web", 3)], "")
    assert (unknown[0], unknown[2]) == (2, "vmledger: error: unknown domain 'wbe'\n")


def test_history_of_a_name_lists_every_domain_that_bore_it_in_the_api(tmp_path: Any) -> None:
    """`history("web")` gives the requests of an undefined `web` and of the `web` defined after it, oldest first."""
    async def go() -> list[tuple[str, Any]]:
        async with vmledger.open(str(tmp_path / "l.db"), hypervisor=SimulatedHypervisor(tmp_path / "sim.json")) as ledger:
            for request_id in ("first", "second"):
                await ledger.define("web", guest_type="hvm", memory=2**30, max_memory=2**31, vcpus=1, max_vcpus=2)
                await ledger.set("web", "vcpus", 2, request_id=request_id)
                if request_id == "first":
                    await ledger.undefine("web")
            return [(r["request_id"], r["requested"]) for r in await ledger.history("web")]

    assert asyncio.run(go()) == [("first", 2), ("second", 2)]
