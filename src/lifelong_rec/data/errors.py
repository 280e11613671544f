"""The one error a user's bad input raises: it names the file, the place and the problem."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """A file, column or argument that cannot be read as events.

    The message reads ``FILE:LINE: column 'C': problem``, leaving out the parts that are unknown,
    so the command line can print it as it is and exit with status 2.
    """

    def __init__(
        self,
        problem: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        column: str | None = None,
    ) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        self.line = line
        self.column = column
        where = "".join(
            [
                self.path or "",
                f":{line}" if line is not None else "",
            ]
        )
        parts = [where] if where else []
        if column is not None:
            parts.append(f"column {column!r}")
        parts.append(problem)
        super().__init__(": ".join(parts))
