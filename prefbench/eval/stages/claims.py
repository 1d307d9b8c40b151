"""claims: the recipe's claims, tested on the stored per-prompt values as the grid's own contrasts
(<run>/eval_claims.json)."""

from __future__ import annotations

import logging

import numpy as np

from prefbench import stats
from prefbench.eval.stages.base import (
    Stage,
    generations,
)
from prefbench.metric_table import PER_PROMPT
from prefbench.recipe import Recipe
from prefbench.results import (
    missing_seeds,
    objective_tables,
    run_dir,
    write_json,
)

log = logging.getLogger(__name__)


def claims(recipe: Recipe) -> list[dict]:
    """Each claim of the recipe at objective level: the grid's own contrast (stats.objective_level over every
    objective of the run on the claim's metric: better minus worse on the same seeds and prompts, or better minus
    the reference, with the grid's run-to-run error term; with one seed, that training run only), its p
    Holm-adjusted across the recipe's claims, and the verdict: held (Holm p < 0.05, better above), contradicted
    (Holm p < 0.05, below), or not resolved. A claim on an objective missing a seed is "not evaluated", the
    seeds named. Each seed's own paired difference is kept as detail. Written to <run>/eval_claims.json."""
    root = run_dir(recipe)
    reference, gens = generations(recipe)
    grids: dict[str, dict] = {}
    rows = []
    for claim in recipe.claims:
        m = PER_PROMPT[claim.metric]
        if claim.metric not in grids:
            ref = m.values(reference)
            tables = objective_tables(gens, m)
            grids[claim.metric] = (
                stats.objective_level(tables, None if ref is None else np.asarray(ref, dtype=float), True)
                if tables
                else {}
            )
        grid = grids[claim.metric]
        per_seed = []
        for seed, gen in zip(recipe.seeds, gens[claim.better]):
            worse = reference if claim.worse == "reference" else gens[claim.worse][recipe.seeds.index(seed)]
            if m.values(gen) is not None and m.values(worse) is not None:
                per_seed.append({"seed": seed, **stats.paired_difference(m.values(gen), m.values(worse))})
        row = {
            "claim": claim.text,
            "better": claim.better,
            "worse": claim.worse,
            "metric": claim.metric,
            "per_seed": per_seed,
        }
        rows.append(
            row
            | (
                stats.claim_contrast(grid, claim.better, claim.worse)
                or {
                    "n_seeds": 0,
                    "missing": missing_seeds(
                        gens, [claim.better] + ([] if claim.worse == "reference" else [claim.worse]), m, recipe.seeds
                    ),
                }
            )
        )
    stats.with_detectable(
        stats.holm_family([r for r in rows if "p_value" in r])
    )  # the claims are their own Holm family
    for r in rows:
        r["verdict"] = (
            "not evaluated"
            if not r["n_seeds"]
            else ("held" if r["difference"] > 0 else "contradicted")
            if r.get("resolved")
            else "not resolved"
        )
    write_json(root / "eval_claims.json", {"claims": rows})
    return rows


STAGE = Stage("claims", "<run>/eval_claims.json", lambda recipe: bool(recipe.claims), claims)
