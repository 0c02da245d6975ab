"""What every script does the same way: one-line errors that exit 2, tracebacks on request, option help.

- :func:`run` calls a script's ``main``: a user error (the package's own exception types,
  :class:`UsageError` for a bad option) prints one line, ``error: ...``, to stderr and exits with
  code 2, with no traceback; ``--debug`` (or ``TT_AGENTS_DEBUG=1``) lets the traceback through.
  Ctrl-C outside training prints ``interrupted`` and exits 130 (training handles its own, see
  :class:`tt_agents.trainer.TrainingInterrupted`).
- :func:`check_device` refuses a device that is not there before anything is loaded.
- :func:`field_docs` reads the docstrings under a dataclass's fields, for options built with
  ``make_dataclass`` (which tyro cannot read them from).

Example:
    >>> from tt_agents import TrainConfig
    >>> field_docs(TrainConfig)["steps"]
    'Optimizer steps.'
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import re
import sys
import textwrap
from collections.abc import Callable
from typing import Any, TypeVar

from tt_agents.checkpoint import CheckpointError
from tt_agents.data import DatasetError
from tt_agents.dt import MissingRewardError
from tt_agents.spaces import SpaceFormatError, SpaceMismatchError
from tt_agents.trainer import TrainConfigError

__all__ = ["DEBUG_ENV", "USER_ERRORS", "UsageError", "check_device", "debug_requested", "field_docs", "one_line",
           "run"]

DEBUG_ENV = "TT_AGENTS_DEBUG"
"""Set to 1 to see the full traceback of a user error (as ``--debug`` does)."""

T = TypeVar("T")


class UsageError(ValueError):
    """A command-line value that cannot work; the message names the option and says what to do."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    UsageError, TrainConfigError, DatasetError, CheckpointError, SpaceMismatchError, SpaceFormatError,
    MissingRewardError,
)
"""Errors a user can fix from the command line: one line and exit code 2, never a traceback."""


def debug_requested(argv: list[str] | None = None) -> bool:
    """``--debug`` among the arguments, or ``TT_AGENTS_DEBUG`` set to anything but ``0``/empty."""
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "0") not in ("", "0")


def one_line(error: BaseException) -> str:
    """The error's message on one line (a multi-line report is joined with ``; ``)."""
    lines = [" ".join(line.split()) for line in str(error).splitlines()]
    return "; ".join(line for line in lines if line) or type(error).__name__


def run(main: Callable[[], T], argv: list[str] | None = None) -> T:
    """Call ``main()`` with the scripts' error convention (see the module docstring)."""
    debug = debug_requested(argv)
    try:
        return main()
    except USER_ERRORS as e:
        if debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def check_device(device: str, option: str = "--device") -> None:
    """Refuse a device this machine does not have, before any work.

    Example:
        >>> check_device("cpu")  # fine; "cuda:99" raises UsageError naming the devices there are
    """
    import torch

    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"{option} {device}: not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise UsageError(f"{option} {device}: no CUDA device is visible here; use {option} cpu (or auto)")
        if dev.index is not None and dev.index >= n:
            raise UsageError(f"{option} {device}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
    elif dev.type not in ("cpu", "mps"):
        raise UsageError(f"{option} {device}: use auto, cpu, cuda or cuda:N")


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass ``cls`` (and its bases), reST double backticks made single quotes.

    Fields without one are left out.
    """
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                out[node.target.id] = clean_help(nxt.value.value)
    return out


def clean_help(text: str) -> str:
    """A docstring as one paragraph of help text: whitespace joined, ````x```` shown as ``'x'``, Sphinx roles
    (``:class:`X```) as their target."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", " ".join(inspect.cleandoc(text).split()))
    return text.replace("``", "'")


def annotate(hint: Any, doc: str | None) -> Any:
    """``hint`` with ``doc`` as its tyro help text (``hint`` unchanged without one)."""
    if not doc:
        return hint
    from typing import Annotated

    import tyro

    return Annotated[hint, tyro.conf.arg(help=doc)]


_DOCUMENTED: dict[type, type] = {}


def documented(cls: type) -> type:
    """A dataclass subclass of ``cls`` whose fields carry their docstrings as help (double backticks cleaned).

    tyro shows a config's field docstrings as they are written (reST's double backticks included);
    this gives it cleaned help instead, nested configs included. Turn a parsed value back with
    :func:`undocumented`.
    """
    if cls in _DOCUMENTED:
        return _DOCUMENTED[cls]
    import typing

    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    fields = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):  # a nested config: its fields documented too
            value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            default: Any = dataclasses.field(default_factory=lambda v=value: documented_value(v))
            hint = documented(hint)
        elif f.default_factory is not dataclasses.MISSING:
            default = dataclasses.field(default_factory=f.default_factory)
        else:
            default = dataclasses.field(default=f.default)
        fields.append((f.name, annotate(hint, docs.get(f.name)), default))
    sub = dataclasses.make_dataclass(cls.__name__, fields, bases=(cls,))
    sub.__doc__ = clean_help(cls.__doc__ or "")
    sub.__cli_base__ = cls  # type: ignore[attr-defined]
    _DOCUMENTED[cls] = sub
    return sub


def undocumented(value: Any) -> Any:
    """The value of the original config class for a value parsed as :func:`documented`'s subclass."""
    base = getattr(type(value), "__cli_base__", None)
    if base is None:
        return value
    return base(**{f.name: undocumented(getattr(value, f.name)) for f in dataclasses.fields(base) if f.init})


def documented_value(value: Any) -> Any:
    """``value`` (a dataclass config) as an instance of :func:`documented`'s subclass, same field values."""
    if not (dataclasses.is_dataclass(value) and not isinstance(value, type)):
        return value
    value = undocumented(value)
    sub = documented(type(value))
    return sub(**{f.name: documented_value(getattr(value, f.name)) for f in dataclasses.fields(type(value))
                  if f.init})
