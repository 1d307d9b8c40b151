"""A run's structured results -> tables (pandas), plots (matplotlib), Markdown and a self-contained HTML page.

The report (tables, words, plots, answers, render: one module each) reads a run through results.load_run (the
run directory's files, as evaluation wrote them); it
only formats: every estimate, interval, test and claim verdict was computed and stored at evaluation time
(eval/run.py, with stats.py), and no log is parsed. Estimates are shown as `mean [95% CI]`. Only an
objective-level leader is bold, where its Holm-corrected contrasts with every other objective hold. Units evaluated with different settings (prompts, sampling, reward version) are
never put in one column: the report refuses and names them.
"""

from prefbench.report.answers import judge_words, samples, samples_html, samples_markdown
from prefbench.report.plots import figures, training_curves
from prefbench.report.render import render_html, render_markdown, write_index, write_report
from prefbench.report.tables import (
    benchmark_table,
    claims_table,
    contrast_table,
    fmt,
    judge_table,
    matched_kl_table,
    objective_table,
    over_training_table,
    preference_table,
    unit_table,
)
from prefbench.report.words import (
    benchmarks_in_words,
    headline,
    health_in_words,
    judge_in_words,
    objectives_in_words,
    results_in_words,
)

__all__ = [
    "benchmark_table",
    "benchmarks_in_words",
    "claims_table",
    "contrast_table",
    "fmt",
    "headline",
    "health_in_words",
    "judge_in_words",
    "judge_table",
    "judge_words",
    "matched_kl_table",
    "over_training_table",
    "objective_table",
    "objectives_in_words",
    "figures",
    "preference_table",
    "render_html",
    "render_markdown",
    "results_in_words",
    "samples",
    "samples_html",
    "samples_markdown",
    "training_curves",
    "unit_table",
    "write_index",
    "write_report",
]
