"""Progress lines of the lifecycle commands (register, import, release), on stderr."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape

console = Console(stderr=True)


@contextmanager
def step(text: str) -> Iterator[None]:
    """A spinner while `text` runs, then a tick line once it is done."""
    with console.status(escape(f"{text}...")):
        yield
    console.print(f"[green]✓[/] {escape(text)}", soft_wrap=True, highlight=False)
