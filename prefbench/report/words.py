"""The report's findings in words: each sentence reads the stored estimates and verdicts, never recomputes them."""

from __future__ import annotations

import math
import statistics

from prefbench.metric_table import dig
from prefbench.report.tables import _column, _diff, _metrics
from prefbench.results import (
    Run,
)
from prefbench.stats import LEVEL


def headline(run: Run) -> list[str]:
    """The report's first paragraphs: what in training or evaluation says a unit's numbers are not its objective's
    (health_in_words), what the results support (results_in_words), then whether the judge can be read
    (judge_in_words); empty ones left out."""
    return [
        words
        for words in (health_in_words(run), results_in_words(run), tuning_in_words(run), judge_in_words(run))
        if words
    ]


def tuning_in_words(run: Run) -> str:
    """How the objectives' settings were chosen, and whether a wider search could have found more: the expected best
    validation reward after all trials against after one fewer (stats.expected_max; Dodge et al. 2019)."""
    t = run.tuning
    if not t:
        return ""
    objectives = t["objectives"]
    budgets = sorted({len(o["trials"]) for o in objectives.values()})
    budget = (
        f"{budgets[0]} trials each"
        if len(budgets) == 1
        else "unequal budgets (" + ", ".join(f"{k} {len(o['trials'])}" for k, o in objectives.items()) + " trials)"
    )
    source = t["prompts"]["file"] or f"the task's {t['prompts']['split']} split"
    rule = "the highest validation reward" + (f" at KL <= {t['kl_cap']}" if t["rule"] == "reward_at_kl" else "")
    curves = "; ".join(
        f"{label} {o['expected_best'][-1]:.3f} (after {len(o['expected_best']) - 1}: {o['expected_best'][-2]:.3f})"
        if len(o["expected_best"]) > 1
        else f"{label} {o['expected_best'][-1]:.3f}"
        for label, o in objectives.items()
    )
    return (
        f"Each objective's settings were chosen by {rule} among its trials ({t['search']} search, {budget}, one seed, "
        f"{t['prompts']['n']} prompts from {source}); the test prompts never informed a choice. Expected best "
        f"validation reward after every trial: {curves}. A curve still rising at its last trial says a wider search "
        "could have found more for that objective."
    )


def health_in_words(run: Run) -> str:
    """The units' stored health findings (prefbench.health), one sentence per kind: its first unit's words and the
    units it was found in."""
    found: dict[str, list[tuple[str, dict]]] = {}
    for part in ("summary", "generation"):  # training's findings first: they say more about a unit
        for u in run.units:
            for finding in (getattr(u, part) or {}).get("health", []):
                found.setdefault(finding["code"], []).append((u.name, finding))
    if not found:
        return ""
    sentences = []
    for kind in found.values():
        (first, finding), names = kind[0], [name for name, _ in kind]
        where = first if len(names) == 1 else f"{len(names)} units ({', '.join(names)}); in {first}"
        sentences.append(f"{where}: {finding['text']}.")
    return "Health of training and evaluation, read before the results: " + " ".join(sentences)


def results_in_words(run: Run) -> str:
    """What the objective-level statistics and the benchmarks support, in one paragraph (what `prefbench run`
    prints at its end)."""
    return " ".join(words for words in (objectives_in_words(run), benchmarks_in_words(run)) if words)


def judge_in_words(run: Run) -> str:
    """Whether the judge's win rates can be read, in words: how many comparisons its diagnostics put in doubt, and
    why for the first of them (the judge table's "trusted" column has every one)."""
    comparisons = (run.judge or {}).get("comparisons") or {}
    doubts = {name: reasons for name, c in comparisons.items() if (reasons := c.get("distrust"))}
    if not doubts:
        return ""
    model = next(iter(comparisons.values()))["judge"]["model"]
    name, reasons = next(iter(doubts.items()))
    others = f" The other {len(doubts) - 1} are marked in the LLM judge table." if len(doubts) > 1 else ""
    return (
        f"The LLM judge ({model}) is not to be trusted in {len(doubts)} of its {len(comparisons)} comparisons: in {name}, "
        f"{'; '.join(reasons)}.{others} Its win rates are shown with their diagnostics, not as evidence."
    )


def objectives_in_words(run: Run) -> str:
    """What the objective-level statistics support, in words: the leader of each ranked metric and whether it is
    resolved, and how far the intervals reach (one seed: this training run only)."""
    if run.objectives and "stale" in run.objectives:
        return f"The objective-level statistics were {run.objectives['stale']}."
    if not (metrics := _metrics(run)):
        return ""
    seeds = len(run.objectives["seeds"])
    scope = (
        f"Objective-level estimates pool {seeds} seeds and the prompts: their intervals are for each objective's mean over "
        "training runs of the recipe (one new training run varies more than that)." + (_error_in_words(metrics) or "")
        if seeds > 1
        else "One seed per objective: differences between objectives describe this training run only; "
        "a new training run of the same recipe could order them differently (add seeds to tell)."
    )
    if seeds == 2:
        scope += (
            " Two seeds: the run-to-run term rests on few degrees of freedom and the intervals are wide; 3 or more seeds "
            "are recommended (prefbench plan RUN_DIR --effect E says how many)."
        )
    said = [moved] if (moved := _moved_in_words(metrics)) else []
    if missing := next((e["missing"] for _, e in metrics if e.get("missing")), None):
        named = "; ".join(
            f"{label} seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))}" for label, s in missing.items()
        )
        said.append(
            f"Missing: {named} (not trained or not evaluated): left out of every comparison, and no leader is named "
            "until they are evaluated."
        )
    for metric, entry in metrics:
        if entry.get("higher_is_better") is None or not entry.get("pairs"):
            continue
        leader, name = entry["leader"], _column(metric)
        if leader is None:
            continue  # an objective is missing a seed: said above
        if entry["best"]:
            said.append(f"{leader} leads on {name}, and its difference from every other objective holds after Holm.")
        else:
            unresolved = [c for c in entry["pairs"] if leader in (c["a"], c["b"]) and not c["resolved"]]
            names = ", ".join(c["b"] if c["a"] == leader else c["a"] for c in unresolved)
            reach = max((c.get("detectable") or 0.0) for c in unresolved)
            family = f" after Holm across the {len(entry['pairs'])} pairs" if len(entry["pairs"]) > 1 else ""
            said.append(
                f"{leader} has the highest {name}, but its difference from {names} is not resolved{family}"
                + (f" (this run could resolve differences of about ±{reach:.3f})." if reach else ".")
            )
    matched = dig(run.objectives, ("matched_kl",))
    if matched and matched["range"] is None:
        said.append(f"No comparison at matched KL: {matched['reason']}.")
    elif matched:
        used = sum(r["used"] for r in matched["runs"])
        where = f"At matched KL ({used} of {len(matched['runs'])} training runs inside the shared KL range {matched['range'][0]:.2f}-{matched['range'][1]:.2f})"
        held = [
            f"{c['a'] if c['difference'] > 0 else c['b']} ahead of {c['b'] if c['difference'] > 0 else c['a']} by {abs(c['difference']):.3f}"
            for c in matched["pairs"]
            if c["resolved"]
        ]
        reach = min((c.get("detectable") or float("inf")) for c in matched["pairs"])
        said.append(
            f"{where}: "
            + (
                "; ".join(held) + f" after Holm across the {len(matched['pairs'])} pairs."
                if held
                else f"no reward difference is resolved after Holm across the {len(matched['pairs'])} pairs"
                + (f" (could resolve about ±{reach:.3f})." if math.isfinite(reach) else ".")
            )
        )
    return " ".join(said[:1] + [scope] + said[1:])


def _error_in_words(metrics: list[tuple[str, dict]]) -> str:
    """Which run-to-run error term the contrasts used (stats.grid_error), in one sentence."""
    error = next((e["error"] for m, e in metrics if e.get("error") and e.get("higher_is_better") is not None), None)
    if error is None or error.get("pairs") is None:
        return ""
    k = len(error["spread"])
    if error["alike"]:
        return (
            f" Contrasts pool the objective x seed variance over the {k} objectives ({error['pooled_df']:g} degrees of freedom): "
            "their seed spreads are alike."
        )
    median = statistics.median(error["spread"].values())
    ratio = error["spread"][error["widest"]] / median if median > 0 else float("inf")
    return (
        f" The objectives' seed spreads are unlike ({error['widest']}'s runs spread {ratio:.1f}x the median objective's): "
        f"its contrasts carry its own spread, and the degrees of freedom fall from {error['pooled_df']:g} to {error['pairs']['df']:.1f}."
    )


def _moved_in_words(metrics: list[tuple[str, dict]]) -> str:
    """The first ranked metric's difference from the reference for each objective, at what KL, and which of them
    hold after Holm across the objectives."""
    ranked = [(m, e) for m, e in metrics if e.get("higher_is_better") is not None and e.get("vs_reference")]
    if not ranked:
        return ""
    metric, entry = ranked[0]
    kl = dict(metrics).get("kl", {}).get("objectives", {})
    at = lambda name: f" at KL {kl[name]['mean']:.2f} nats" if name in kl else ""
    moves = ", ".join(f"{c['objective']} {_diff(c)}{at(c['objective'])}" for c in entry["vs_reference"])
    held = [c for c in entry["vs_reference"] if c["resolved"]]
    p = sorted(c["p_holm"] for c in entry["vs_reference"])
    reach = min((c.get("detectable") or float("inf")) for c in entry["vs_reference"])
    could = f"; this run could resolve moves of about ±{reach:.3f}" if math.isfinite(reach) else ""
    verdict = (
        f"{', '.join(c['objective'] for c in held)} moved it after Holm across the {len(p)} objectives"
        if held
        else f"none of these moves is resolved after Holm across the {len(p)} objectives (Holm p {p[0]:.3g}"
        + (f" to {p[-1]:.3g}" if f"{p[-1]:.3g}" != f"{p[0]:.3g}" else "")
        + could
        + ")"
    )
    return f"{_column(metric).capitalize()} minus the reference's (paired on the prompts, 95% CI): {moves}; {verdict}."


def benchmarks_in_words(run: Run) -> str:
    """Which checkpoints' benchmark scores differ from the reference's after Holm across the grid, in words."""
    results = [(u.name, key, r) for u in run.units for key, r in (u.benchmarks or {}).items()]
    if not results:
        return ""
    changed = [
        f"{name} {key} {_diff(r)} (Holm p {r['p_holm']:.3g})"
        for name, key, r in results
        if r.get("p_holm", 1.0) < 1 - LEVEL
    ]
    if changed:
        return (
            "Benchmarks: "
            + "; ".join(changed)
            + " differ from the reference after Holm across every checkpoint and task."
        )
    n = sorted({r["n"] for _, _, r in results})
    tests = f"{len(results)} paired test{'s' if len(results) > 1 else ''}"
    return (
        f"Benchmarks: no checkpoint differs from the reference after Holm across every checkpoint and task "
        f"({tests} on {n[0] if len(n) == 1 else f'{n[0]} to {n[-1]}'} documents)."
    )
