"""Reproduce the figures of benchmarks.md: ``python scripts/bench.py <section> [--options]``.

Every module in ``scripts/benches/`` (not starting with ``_``) is a section: it defines a
``@dataclass Args`` and ``main(args)``, which measures, prints, and rewrites its own section of
``benchmarks.md`` with the command, the machine and the date.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path
from typing import Annotated, Union

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benches  # noqa: E402


def sections() -> dict[str, object]:
    out = {}
    for info in pkgutil.iter_modules(benches.__path__):
        if not info.name.startswith("_"):
            out[info.name.replace("_", "-")] = importlib.import_module(f"benches.{info.name}")
    return out


if __name__ == "__main__":
    mods = sections()
    if not mods:
        raise SystemExit("no benchmark sections found in scripts/benches/")
    union = Union[  # type: ignore[valid-type]
        tuple(
            Annotated[m.Args, tyro.conf.subcommand(name, description=(m.__doc__ or "").strip().splitlines()[0])]
            for name, m in mods.items()
        )
    ]
    args = tyro.cli(union)
    for m in mods.values():
        if isinstance(args, m.Args):
            m.main(args)
            break
