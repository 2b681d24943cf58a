"""How every `instructrank` command reports a user's mistake: one red line naming it, exit
code 1, no traceback. Its own module so the main CLI and its sub-apps share it without
importing each other."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.text import Text

err = Console(stderr=True)


def fail(message: str) -> None:
    """Print `message` verbatim (no markup: it may hold '[column]') and exit with 1."""
    err.print(Text("error: ", style="red") + Text(message), soft_wrap=True)
    sys.exit(1)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Known errors become one red line and exit code 1, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pydantic import ValidationError

        from recdata.errors import InstructRankError

        try:
            return fn(*args, **kwargs)
        except InstructRankError as exc:
            fail(str(exc))
        except ValidationError as exc:
            msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            fail(f"invalid configuration: {msgs}")

    return wrapper
