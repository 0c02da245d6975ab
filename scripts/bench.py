"""Reproduce the figures of benchmarks.md: ``python scripts/bench.py <section> [--options] [--write]``.

Every module in ``scripts/benches/`` (not starting with ``_``) is a section: it defines a
``@dataclass Args`` and ``main(args)``, which measures and prints its figures. Only with ``--write``
(anywhere on the command line) does it also rewrite its own section of ``benchmarks.md``, stamped
with the command, the machine and the date; without it benchmarks.md is left alone.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path
from typing import Annotated, Any, Union

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benches  # noqa: E402
from _cli import run  # noqa: E402
from benches import _common  # noqa: E402

WRITE_FLAG = "--write"


def sections() -> dict[str, Any]:
    out = {}
    for info in pkgutil.iter_modules(benches.__path__):
        if not info.name.startswith("_"):
            out[info.name.replace("_", "-")] = importlib.import_module(f"benches.{info.name}")
    return out


def print_only(name: str, title: str, body: str, path: Path | None = None) -> None:
    """The section ``write_section`` would write (markers, command, machine, date), printed; benchmarks.md is not
    touched."""
    import datetime

    stamp = (f"- command: `{_common.command()} {WRITE_FLAG}`\n- machine: {_common.machine()}\n"
             f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}\n")
    print(f"<!-- bench:{name} -->\n## {title}\n\n{stamp}\n{body.strip()}\n<!-- /bench:{name} -->")
    print(f"(benchmarks.md not changed: add {WRITE_FLAG} to record this section)")


def cli(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    write = WRITE_FLAG in argv
    argv = [a for a in argv if a != WRITE_FLAG]

    def _run_section(mods: dict[str, Any], argv: list[str]) -> None:
        union = Union[  # type: ignore[valid-type]
            tuple(
                Annotated[m.Args, tyro.conf.subcommand(name, description=(m.__doc__ or "").strip().splitlines()[0])]
                for name, m in mods.items()
            )
        ]
        description = (f"Measure one section of benchmarks.md and print its figures; {WRITE_FLAG} also records them "
                       "in benchmarks.md.")
        args = tyro.cli(union, args=argv, description=description)
        for m in mods.values():
            if isinstance(args, m.Args):
                m.main(args)
                break

    def go() -> None:
        mods = sections()
        if not mods:
            raise SystemExit("error: no benchmark sections found in scripts/benches/")
        # each section writes through its module's write_section: pointed at the file or at stdout for this call only
        # (a caller in the same process, a test, finds the modules as they were)
        saved = {m: m.write_section for m in mods.values() if hasattr(m, "write_section")}
        for m in saved:
            m.write_section = _common.write_section if write else print_only
        try:
            _run_section(mods, argv)
        finally:
            for m, fn in saved.items():
                m.write_section = fn

    run(go, argv)


if __name__ == "__main__":
    cli()
