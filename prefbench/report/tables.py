"""The report's tables (pandas): one row per unit, per objective, per contrast, per claim, per benchmark, as stored."""

from __future__ import annotations

import pandas as pd

from prefbench.eval.judge.protocols import PROTOCOLS, Protocol
from prefbench.metric_table import GENERATION, METRICS, PER_PROMPT, Metric, dig
from prefbench.results import (
    Run,
)

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
    """One row per unit (reference first): generation estimates as `mean [CI]` over prompts, training costs (and, where
    a unit trained semi-online, the samples it drew, the reward calls and the seconds they took). No row is marked
    best here: which objective leads is an objective-level question (objective_table)."""
    rows = []
    has_gen = any(u.generation for u in run.units)
    # a column no unit has (the greedy pass when eval.generation.greedy is false) is left out
    columns = [m for m in GENERATION if any(m.estimate(u.generation) is not None for u in run.units)]
    online = any((u.summary or {}).get("online") for u in run.units)
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
        row["steps"] = str(s["steps"]) if s else ""
        row["train s"] = f"{s['train_seconds_this_process']:.0f}" if s else ""
        row["tokens/s"] = f"{s['loop_tokens_per_s']:.0f}" if s else ""
        row["peak MB"] = f"{s['peak_memory_mb']:.0f}" if s else ""
        if online:  # what an online arm paid besides its steps: sampling and scoring, for a comparison at equal cost
            costs = (s or {}).get("online") or {}
            row["samples"] = str(costs.get("samples", 0)) if s else ""
            row["reward calls"] = str(costs.get("reward_calls", 0)) if s else ""
            row["sampling s"] = f"{costs.get('seconds', 0):.0f}" if s else ""
        rows.append(row)
    return pd.DataFrame(rows).set_index("unit")


def settings_table(run: Run) -> pd.DataFrame | None:
    """Each objective's hyperparameters and training settings, where any objective trained at settings of its own
    (its entry's `train`) or semi-online (its `online`: every, answers per prompt); None when every objective shares
    the run's (the provenance lines say those)."""
    entries = run.manifest["recipe"]["objectives"]
    if not any(e.get("train") or e.get("online") for e in entries):
        return None
    shared = run.manifest["recipe"]["train"]
    own = sorted({k for e in entries for k in e.get("train", {})})
    rows = []
    for e in entries:
        hp = {k: v for k, v in e.items() if k not in ("name", "label", "train", "online")}
        settings = {k: e.get("train", {}).get(k, shared[k]) for k in own}
        o = e.get("online")
        data = {"data": f"online: every {o['every']} steps, {o['sampling']['n']} answers a prompt" if o else "offline"}
        shown = data if any(x.get("online") for x in entries) else {}
        rows.append({"objective": e["label"], "hyperparameters": _pairs(hp) or "defaults", **shown, **settings})
    return pd.DataFrame(rows).set_index("objective")


def tuning_table(run: Run) -> pd.DataFrame | None:
    """Every tuning trial: its settings, validation reward [95% CI over the validation prompts] and KL, the chosen
    one of each objective marked; None for a run that was not tuned."""
    if not run.tuning:
        return None
    rows = [
        {
            "trial": r["label"], "settings": _pairs(r["settings"]),
            "validation reward": fmt(r["reward"]), "KL": f"{r['kl']:.3f}",
            "chosen": "yes" if r["label"] == o["chosen"] else "", "health": ", ".join(r["health"]),
        }
        for o in run.tuning["objectives"].values()
        for r in o["trials"]
    ]  # fmt: skip
    return pd.DataFrame(rows).set_index("trial")


def over_training_table(run: Run) -> pd.DataFrame | None:
    """Each objective's metrics at every evaluated step (snapshots and the end of training): mean over seeds
    [95% CI for a new training run] (eval_objectives.json's over_training); None without snapshots."""
    over = dig(run.objectives, ("over_training",))
    if not over:
        return None
    rows = [
        {"objective": label, "step": int(step)}
        | {m.column: fmt({"mean": at[name]["difference"], "ci": at[name]["ci"]}, m.digits)
           for name, m in METRICS.items() if name in at}
        for label, steps in over.items()
        for step, at in sorted(steps.items(), key=lambda item: int(item[0]))
    ]  # fmt: skip
    return pd.DataFrame(rows).set_index("objective")


def _pairs(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


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


def _trusted(c: dict) -> str:
    """Whether the judge stage found the comparison's win rate readable (its stored "distrust" reasons)."""
    return "n/a" if "distrust" not in c else "no" if c["distrust"] else "yes"


def judge_protocol(run: Run) -> Protocol:
    """The judging protocol a run's eval_judge.json was written by (runs before protocols: pairwise)."""
    return PROTOCOLS[(run.judge or {}).get("protocol", "pairwise")]


def judge_table(run: Run) -> pd.DataFrame | None:
    """Every judged comparison with the judge's diagnostics, so a reader sees how far to trust the win rates."""
    j = run.judge
    if not j:
        return None
    if (protocol := judge_protocol(run)).table is not None:  # a protocol with a table of its own
        return protocol.table(j)
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
                "trusted": _trusted(c),
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
