"""`vmledger plot`: the timeline drawn from a real ledger shows the values and outcomes the requests made (issue 17)."""

from __future__ import annotations

import asyncio
import re
import struct
import subprocess
import sys
from typing import Any


import vmledger
from vmledger.adapters.simulated import SimulatedHypervisor
from vmledger.cli import main
from vmledger import _plot

MiB, GiB = 2**20, 2**30


async def _story(ledger: vmledger.Ledger) -> list[str]:
    """Make memory go 1GiB -> 1224MiB (live only 1124MiB) -> 2GiB, then an 8GiB request refused; return the request ids."""
    sim = ledger.hypervisor
    await ledger.define("web", guest_type="pv", memory=GiB, max_memory=4 * GiB, vcpus=2, max_vcpus=4)
    await ledger.start("web")
    await sim.set_host_free(100 * MiB)
    ids = [(await ledger.set("web", "memory", 1224 * MiB, principal="alice")).request_id]
    await sim.set_host_free(8 * GiB)
    ids.append((await ledger.set("web", "memory", 2 * GiB, principal="alice")).request_id)
    ids.append((await ledger.set("web", "memory", 8 * GiB, principal="bob")).request_id)
    return ids


def _levels(svg: str, gid: str) -> list[float]:
    """Return the distinct heights the step line `gid` takes, in the order it takes them (SVG y grows downward)."""
    path = re.search(rf'<g id="{gid}">\s*<path d="([^"]*)"', svg).group(1)  # type: ignore[union-attr]
    levels: list[float] = []
    for y in (float(m) for m in re.findall(r"[ML] [\d.]+ ([\d.]+)", path)):
        if not levels or abs(levels[-1] - y) > 1e-6:
            levels.append(y)
    return levels


def _ratio(levels: list[float]) -> float:
    """Return where the middle of three levels lies between the first and the last (0 at the first, 1 at the last)."""
    first, middle, last = levels
    return (middle - first) / (last - first)


def test_the_svg_shows_each_value_and_outcome_the_requests_made(url: str, tmp_path: Any) -> None:
    """Persistent and live lines step through the values set, in proportion, and each outcome has its marker and label."""
    async def go() -> tuple[list[str], str]:
        async with vmledger.open(url, hypervisor=SimulatedHypervisor(tmp_path / "sim.json")) as ledger:
            ids = await _story(ledger)
            _plot.render(await _plot.timeline(ledger, "web", "memory"), str(tmp_path / "memory.svg"))
        return ids, (tmp_path / "memory.svg").read_text(encoding="utf-8")

    (partial, applied, refused), svg = asyncio.run(go())
    persistent, live = _levels(svg, "persistent"), _levels(svg, "live")
    assert (sorted(re.findall(r'id="(outcome [^"]*)"', svg)), re.findall(r'id="requested ([^"]*)"', svg)) == (sorted([
        f"outcome {partial} persistent applied", f"outcome {partial} live partial",
        f"outcome {applied} persistent applied", f"outcome {applied} live applied",
        f"outcome {refused} persistent refused", f"outcome {refused} live refused"]), [partial, applied, refused])
    # Values 1024, 1224 and 2048 MiB persistent, 1024, 1124 and 2048 MiB live, on one axis.
    assert (len(persistent), len(live), persistent[0] == live[0], persistent[2] == live[2],
            round(_ratio(persistent), 4), round(_ratio(live), 4)) == (
        3, 3, True, True, round(200 / 1024, 4), round(100 / 1024, 4))
    assert [label in svg for label in ("1224MiB: persistent applied, live partial 1124MiB",
                                       "2GiB: persistent applied, live applied",
                                       "8GiB: persistent refused 2GiB, live refused 2GiB")] == [True] * 3


def test_cli_plot_writes_a_png_and_refuses_bad_requests(tmp_path: Any, capsys: Any) -> None:
    """`vmledger plot` writes a PNG of the figure's size, exit 0; a bad extension, domain or property exits 2, writing nothing."""
    db = str(tmp_path / "ledger.db")

    async def setup() -> None:
        async with vmledger.open(db, hypervisor=SimulatedHypervisor(tmp_path / "sim.json")) as ledger:
            await _story(ledger)

    asyncio.run(setup())
    png = tmp_path / "memory.png"
    runs = []
    for args in (("web", "memory", "-o", str(png)), ("web", "memory", "-o", str(tmp_path / "m.jpg")),
                 ("wbe", "memory", "-o", str(tmp_path / "m.svg")), ("web", "memroy", "-o", str(tmp_path / "m.svg"))):
        code = main(["--db", db, "--hypervisor", f"sim:{tmp_path / 'sim.json'}", "plot", *args])
        out, err = capsys.readouterr()
        runs.append((code, out.replace(str(tmp_path), "TMP"), err.replace(str(tmp_path), "TMP")))
    head = png.read_bytes()[:24]
    assert (runs, head[:8], struct.unpack(">II", head[16:24]), sorted(p.name for p in tmp_path.glob("m.*"))) == ([
        (0, "wrote TMP/memory.png\n", ""),
        (2, "", "vmledger: error: plot writes .svg or .png files, not 'TMP/m.jpg'\n"),
        (2, "", "vmledger: error: unknown domain 'wbe': did you mean 'web'?\n"),
        (2, "", "vmledger: error: unknown property 'memroy' (did you mean 'memory'? known: max_memory, max_vcpus, "
                "memory, memory_actual, numa_nodes, power_state, vcpus, media:DEVICE)\n"),
    ], b"\x89PNG\r\n\x1a\n", (1100, 450), [])


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path: Any) -> None:
    """Without matplotlib, `vmledger plot` exits 2 with one line naming the `plot` extra, and writes no file.

    matplotlib is installed for the tests, so the child process hides it from imports: the one fault here that
    cannot be caused otherwise.
    """
    db = str(tmp_path / "ledger.db")

    async def setup() -> None:
        async with vmledger.open(db, hypervisor=SimulatedHypervisor(tmp_path / "sim.json")) as ledger:
            await _story(ledger)

    asyncio.run(setup())
    code = ("import sys; sys.modules['matplotlib'] = None; from vmledger.cli import main; "
            f"sys.exit(main(['--db', {db!r}, 'plot', 'web', 'memory', '-o', {str(tmp_path / 'm.svg')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert (done.returncode, done.stdout, done.stderr.startswith("vmledger: error: vmledger plot needs matplotlib"),
            done.stderr.rstrip().endswith("pip install 'vmledger[plot]'"), (tmp_path / "m.svg").exists()) == (
        2, "", True, True, False)
