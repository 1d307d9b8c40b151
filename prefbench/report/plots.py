"""The report's plots (matplotlib, PNG bytes): training curves, reward against KL, reward against the reference's,
diversity against reward, the frontier at matched KL."""

from __future__ import annotations

import io

from prefbench.metric_table import METRICS, dig
from prefbench.results import (
    Run,
    UnitResults,
)

# ---- plots ----------------------------------------------------------------------------------------


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib  # deferred: matplotlib: a second to import; only plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: matplotlib: a second to import; only plots need it

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


def expected_best(tuning: dict) -> bytes:
    """Each objective's expected best validation reward after n trials (Dodge et al. 2019), n = 1..its budget."""
    fig, ax = _pyplot().subplots(figsize=(5.5, 3.8))
    for label, o in tuning["objectives"].items():
        curve = o["expected_best"]
        ax.plot(range(1, len(curve) + 1), curve, "o-", label=label)
    ax.set_xlabel("trials")
    ax.set_ylabel("expected best validation reward")
    ax.set_title("tuning: the best of n trials, expected", fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)


def over_training(trained: list[UnitResults], reference: UnitResults | None = None) -> bytes:
    """Each objective's held-out reward, KL, entropy and diversity (and held-out preference accuracy, where the data
    holds examples out) at every snapshot and at the end of training, the mean over its seeds: where it starts to
    overfit (reward flat or falling while KL grows and entropy and diversity fall); each seed's own curve thin
    beside it, so the spread between training runs shows. Every curve starts from the reference at step 0."""
    plt = _pyplot()
    names = ("reward", "kl", "entropy_per_token", "distinct_2")
    if any(u.preference for u in trained):
        names += ("preference_accuracy",)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    labels = list(dict.fromkeys(u.label for u in trained))
    for ax, name in zip(axes[0], names):
        m = METRICS[name]
        for i, label in enumerate(labels):
            points: dict[int, list[float]] = {}
            for u in (u for u in trained if u.label == label):
                final = {"generation": u.generation, "preference": u.preference}
                mine = {}
                start = (
                    [(0, {"generation": reference.generation, "preference": reference.preference})] if reference else []
                )
                for step, result in [*start, *u.snapshots.items(), (u.summary.get("steps"), final)]:
                    value = m.estimate(result[m.file]) if m.shape == "number" else m.mean(result[m.file])
                    if step is not None and value is not None:
                        points.setdefault(step, []).append(value)
                        mine[step] = value
                ax.plot(sorted(mine), [mine[k] for k in sorted(mine)], "-", color=f"C{i % 10}", lw=0.6, alpha=0.4)
            steps = sorted(points)
            ax.plot(steps, [sum(points[s]) / len(points[s]) for s in steps], "o-", color=f"C{i % 10}", label=label)
        ax.set_title(m.column)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.suptitle("held-out evaluation over training (mean over seeds; thin: each seed)", fontsize=9)
    return _png(fig)


def figures(run: Run) -> dict[str, bytes]:
    out = {}
    if run.tuning:
        out["expected_best"] = expected_best(run.tuning)
    if matched := dig(run.objectives, ("matched_kl",)):
        out["frontier"] = frontier_plot(matched)
    trained = [u for u in run.units if u.curves]
    if trained:
        out["training_curves"] = training_curves(trained)
    if over := [u for u in trained if u.snapshots and u.generation]:
        out["over_training"] = over_training(over, next((u for u in run.units if u.name == "reference"), None))
    gen = [u for u in run.units if METRICS["reward"].estimate(u.generation)]  # none with eval.reward: none
    trained_gen = [u for u in gen if u.name != "reference"]
    if gen:
        out["reward_vs_kl"] = reward_vs_kl(gen)
    if trained_gen:
        out["reward_delta"] = reward_delta(trained_gen)
        out["diversity_vs_reward"] = diversity_vs_reward(gen)
    return out
