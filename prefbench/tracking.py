"""Experiment tracking: `train.report_to` (TRL's name for it) sends a unit's metrics.jsonl records, as they are
written, and its evaluation summary to the trackers people already use. One tracker run per unit
("<run>/<unit>", e.g. "kto_vs_dpo/dpo/seed0", or "<run>/reference"), grouped by the recipe's run name, in the
project PREFBENCH_PROJECT names (default "prefbench"). Nothing is logged when report_to is empty. Keys, hosts
and modes come from each tracker's own environment variables (WANDB_API_KEY, WANDB_MODE=offline, TRACKIO_DIR,
...), never from a recipe or a result file.

TRACKERS is the registry: a tracker is a class built with (project, group, name, config, log_dir) with log(metrics,
step) and close().
"""

from __future__ import annotations

import os
from pathlib import Path

from prefbench.results import jsonable


class TensorBoard:
    """Event files under <log_dir>/tensorboard/ (torch's SummaryWriter: pip install tensorboard)."""

    def __init__(self, project: str, group: str, name: str, config: dict, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter  # deferred: an optional tracker (prefbench[track])

        self.writer = SummaryWriter(log_dir=str(log_dir / "tensorboard"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Trackio:
    """A Trackio run (pip install trackio): stored locally (TRACKIO_DIR), or in a Space where its variables say."""

    def __init__(self, project: str, group: str, name: str, config: dict, log_dir: Path):
        import trackio  # deferred: an optional tracker (prefbench[track])

        self.run = trackio.init(project=project, name=name, group=group, config=config, resume="allow")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class WandB:
    """A Weights & Biases run (pip install wandb), resumed by its id when the unit's process starts again; the key
    from WANDB_API_KEY (or wandb login), WANDB_MODE=offline to write it locally only."""

    def __init__(self, project: str, group: str, name: str, config: dict, log_dir: Path):
        import wandb  # deferred: an optional tracker (prefbench[track])

        log_dir.mkdir(parents=True, exist_ok=True)
        run_id = "".join(c if c.isalnum() else "-" for c in name)[:100]  # the same unit, the same W&B run
        self.run = wandb.init(
            project=project,
            group=group,
            name=name,
            id=run_id,
            config=config,
            dir=str(log_dir),
            resume="allow",
            reinit="create_new",
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


TRACKERS = {"trackio": Trackio, "wandb": WandB, "tensorboard": TensorBoard}


class Trackers:
    """The recipe's trackers for one unit, opened on the first record and closed by close(); each record's numbers
    logged at its "step"."""

    def __init__(self, recipe, unit: str, log_dir: Path):
        self.names, self.recipe, self.unit, self.log_dir = tuple(recipe.train.report_to), recipe, unit, Path(log_dir)
        self.open: list = []

    def log(self, record: dict, step: int | None = None) -> None:
        if not self.names:
            return
        if not self.open:
            project = os.environ.get("PREFBENCH_PROJECT", "prefbench")
            config = jsonable(self.recipe.to_dict())
            self.open = [
                TRACKERS[n](project, self.recipe.name, f"{self.recipe.name}/{self.unit}", config, self.log_dir)
                for n in self.names
            ]
        metrics = {
            k: float(v)
            for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        for tracker in self.open:
            tracker.log(metrics, record.get("step", step))

    def close(self) -> None:
        for tracker in self.open:
            tracker.close()
        self.open = []


def log_evaluation(recipe, unit: str, log_dir: Path, summary: dict[str, float]) -> None:
    """A unit's evaluation summary ("eval/..." numbers), logged once at the unit's last training step."""
    trackers = Trackers(recipe, unit, log_dir)
    label = unit.split("/")[0]
    steps = recipe.train_for(recipe.objective(label)).steps if unit != "reference" else recipe.train.steps
    try:
        trackers.log({f"eval/{k}": v for k, v in summary.items() if v is not None}, step=steps)
    finally:
        trackers.close()
