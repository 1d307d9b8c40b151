"""The errors prefbench reports to users as one message each (the CLI prints them without a traceback)."""


class PrefbenchError(Exception):
    pass


class RecipeError(PrefbenchError, ValueError):
    """All of a recipe's problems, one per line."""

    def __init__(self, problems: list[str], source: str = "recipe"):
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(f"  - {p}" for p in problems))


class TrainingError(PrefbenchError, RuntimeError):
    pass
