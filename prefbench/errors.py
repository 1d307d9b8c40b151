"""The errors prefbench reports to users as one message each (the CLI prints them without a traceback)."""

import difflib
from collections.abc import Iterable
from typing import Any


def did_you_mean(value: Any, known: Iterable) -> str:
    """' (did you mean 'x'?)' for the closest known name, or '': the hint every unknown-name message carries."""
    close = difflib.get_close_matches(str(value), [str(k) for k in known], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class PrefbenchError(Exception):
    pass


class RecipeError(PrefbenchError, ValueError):
    """All of a recipe's problems, one per line."""

    def __init__(self, problems: list[str], source: str = "recipe"):
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(f"  - {p}" for p in problems))


class TrainingError(PrefbenchError, RuntimeError):
    pass
