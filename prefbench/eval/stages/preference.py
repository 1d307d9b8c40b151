"""preference: on the held-out split of the recipe's own data, no generation: implicit-reward accuracy, margin,
log-likelihood per token, against the reference (<unit>/eval_preference.json)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from prefbench import models, stats
from prefbench.data.prepare import prepare_data
from prefbench.data.tokenize import fingerprint
from prefbench.eval.metrics import METRICS_VERSION, preference_metrics, row_stats
from prefbench.eval.stages.base import (
    EvalUnit,
    Stage,
    finished_result,
    pending,
    tracked,
)
from prefbench.metric_table import dig
from prefbench.recipe import Recipe
from prefbench.results import (
    write_json,
)
from prefbench.tracking import log_evaluation

log = logging.getLogger(__name__)


FILE = "eval_preference.json"


def preference(recipe: Recipe, names: list[str] | None = None) -> dict[str, dict]:
    """Held-out preference metrics (metrics.preference_metrics) of every unit (or the `names` ones) on the
    held-out examples of the recipe's own data (the split the trainer made, data.eval_fraction), paired against
    the reference's on the same examples; <unit>/eval_preference.json. One forward of each checkpoint over the
    held-out set; the reference's log-probs are kept in its file, so checkpoints evaluated later read them."""
    examples, settings = held_out(recipe)
    if not examples:
        log.warning(
            "preference: the held-out split is empty (data.eval_fraction %s); nothing to measure",
            recipe.data.eval_fraction,
        )
        return {}
    units, done, todo = pending(recipe, names, FILE, settings, "preference")
    if todo:
        score_preferences(recipe, examples, settings, units["reference"], done, todo)
    return {name: done[name] for name in units if name in done}


def score_preferences(
    recipe: Recipe,
    examples: list,
    settings: dict,
    reference: EvalUnit,
    done: dict[str, dict],
    todo: list[EvalUnit],
    track: bool = True,
) -> None:
    """Each `todo` unit's held-out preference metrics against the reference's, into `done` and its out/FILE (the
    curve stage scores snapshots with it, track=False)."""
    rows = [(i, i, j) for i, e in enumerate(examples) for j in range(len(e.completions))]
    width = len(examples[0].completions)

    def logps(checkpoint: Path) -> tuple[np.ndarray, np.ndarray]:
        stats = row_stats(models.load_model(checkpoint), examples, rows)
        return stats["logp"].reshape(-1, width), stats["tokens"].reshape(-1, width)

    mine = done.get("reference") or finished_result(reference.out / FILE, settings)
    if kept := dig(mine, ("per_example",)):
        ref, counts = np.array(kept["logp"]), np.array(kept["tokens"])
    else:
        ref, counts = logps(reference.checkpoint)
    ref_metrics = preference_metrics(examples, ref, ref, counts)
    for u in tqdm(todo, desc="held-out preferences", unit="checkpoint"):
        result = preference_metrics(examples, ref if u.name == "reference" else logps(u.checkpoint)[0], ref, counts)
        if result["data"] == "paired":
            result["vs_reference"] = {
                key: stats.paired_difference(result["per_pair"][key], ref_metrics["per_pair"][key])
                for key in ("accuracy", "chosen_logp_per_token")
            }
        if u.name == "reference":  # summed log-probs and token counts, [examples, completions]
            result["per_example"] = {"logp": ref.tolist(), "tokens": counts.tolist()}
        done[u.name] = {"settings": settings, "unit": u.name, **result}
        write_json(u.out / FILE, done[u.name])
        if track:
            log_evaluation(recipe, u.name, u.out, tracked(result, "preference"))


def held_out(recipe: Recipe) -> tuple[list, dict]:
    """The held-out examples of the recipe's data and the settings a unit's eval_preference.json is kept by."""
    examples = prepare_data(recipe, models.load_tokenizer(recipe.model.name)).eval
    return examples, {
        "metrics_version": METRICS_VERSION,
        "held_out_fingerprint": fingerprint(examples) if examples else None,
    }


def _done(recipe: Recipe) -> Callable[[EvalUnit], bool]:
    examples, settings = held_out(recipe)
    return lambda u: not examples or finished_result(u.out / FILE, settings) is not None


STAGE = Stage(
    "preference",
    "<unit>/eval_preference.json",
    lambda recipe: recipe.data.eval_fraction > 0,
    preference,
    per_unit=True,
    done=_done,
)
