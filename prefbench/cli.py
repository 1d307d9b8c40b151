"""prefbench's command line: dispatch only; the work lives in the modules it calls.

Each command imports the modules it runs inside its own function: `prefbench --help` and `prefbench check` would
otherwise pay for torch, transformers, vLLM and lm-eval (tens of seconds) before they answer."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path


def objectives_table() -> str:
    """One block per registered objective: data kind, reference need, version, hyperparameters, paper."""
    from prefbench.objectives import OBJECTIVES

    lines = []
    for name, cls in OBJECTIVES.items():
        defaults = {
            f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls)
            if f.init
        }
        params = ", ".join(f"{k}={v!r}" for k, v in defaults.items()) or "(none)"
        ref = "reference" if cls.needs_reference else "reference-free"
        lines.append(f"{name:<18} {cls.data:<8} {ref:<14} v{cls.version}  {params}")
        lines.append(f"{'':<18} {cls.paper}")
    return "\n".join(lines)


def print_evaluation(results: dict[str, dict]) -> None:
    """One line per unit: sampled-pass reward with its 95% CI and difference vs reference (where there is a
    reward), KL, length."""
    from prefbench.metric_table import METRICS

    def shown(name: str, sign: str = "") -> str:
        est = METRICS[name].estimate(m)
        if not est or est.get("mean") is None:
            return "n/a"
        lo, hi = est["ci"]
        return f"{est['mean']:{sign}.3f} [{lo:{sign}.3f}, {hi:{sign}.3f}]"

    for name, m in results.items():
        reward = (
            f"reward {shown('reward')}  vs ref {shown('reward_minus_reference', '+')}  "
            if METRICS["reward"].estimate(m)
            else ""
        )
        print(f"{name:<24} {reward}KL {shown('kl')}  words {METRICS['length_words'].mean(m):.1f}")


def print_training(summaries: list[dict]) -> None:
    for s in summaries:
        if s.get("final"):
            print(f"{s['label']:<20} seed {s['seed']}  loss {s['final']['loss']:.4f}  ({s['steps']} steps)")


# ---- one function per command: each returns the exit status --------------------------------------


def cmd_objectives(args) -> int:
    print(objectives_table())
    return 0


def cmd_check(args) -> int:
    """Validate every section of a training or generate-data recipe, looking benchmark task names up in
    lm-eval's index and the judge's key variable up in the environment (seconds; no model loads, no engine
    starts), and print it resolved. Raises RecipeError with every problem, one line each."""
    import yaml

    from prefbench.check import load_any, memory_estimate, recipe_warnings
    from prefbench.recipe import Recipe

    recipe = load_any(args.recipe, args.overrides, lookups=True)
    print(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    if isinstance(recipe, Recipe) and (estimate := memory_estimate(recipe))[0] is not None:
        limit = f" of {estimate[1]:g} GiB" if estimate[1] else ""
        print(f"prefbench: memory: a training unit needs {estimate[0].line()}{limit}", file=sys.stderr)
    for line in recipe_warnings(recipe) if isinstance(recipe, Recipe) else []:  # a generate-data recipe has none
        print(f"prefbench: warning: {line}", file=sys.stderr)
    return 0


def cmd_run(args) -> int:
    from prefbench.eval.run import evaluate
    from prefbench.report import health_in_words, results_in_words, write_report
    from prefbench.results import load_run, run_dir
    from prefbench.runner import train_units, tune

    recipe = evaluation_recipe(args)
    if recipe.tune is not None:
        recipe = tune(recipe)
        print_tuning(recipe)
    print_training(train_units(recipe))
    print_evaluation(evaluate(recipe))
    out = write_report(run_dir(recipe), recipe.report_dir)
    run = load_run(run_dir(recipe))
    for words in (health_in_words(run), results_in_words(run)):
        if words:
            print(f"\n{words}")
    print(f"report: {out / 'report.md'} and {out / 'report.html'}")
    return 0


def cmd_tune(args) -> int:
    from prefbench.runner import tune

    print_tuning(tune(evaluation_recipe(args)))
    return 0


def print_tuning(recipe) -> None:
    from prefbench.results import read_json, run_dir

    tuning = read_json(run_dir(recipe) / "tuning.json")
    for label, o in tuning["objectives"].items():
        best = next(r for r in o["trials"] if r["label"] == o["chosen"])
        settings = ", ".join(f"{k}={v}" for k, v in o["settings"].items())
        print(
            f"{label:<20} chose {settings} of {len(o['trials'])} trials: validation reward {best['reward']['mean']:.3f}, "
            f"KL {best['kl']:.3f}"
        )


def cmd_train(args) -> int:
    from prefbench.check import load_recipe
    from prefbench.errors import RecipeError
    from prefbench.runner import chosen, train_units

    recipe = load_recipe(args.recipe, args.overrides)  # a train unit needs no lookups
    recipe = recipe.trials_recipe() if args.trials else chosen(recipe)
    if args.seed not in recipe.seeds:
        raise RecipeError([f"--seed {args.seed}: not among the recipe's seeds {list(recipe.seeds)}"], args.recipe)
    recipe.objective(args.objective)
    print_training(train_units(recipe, labels=[args.objective], seeds=[args.seed]))
    return 0


def cmd_prepare(args) -> int:
    from prefbench.check import load_recipe
    from prefbench.runner import chosen, prepare

    recipe = load_recipe(args.recipe, args.overrides)
    prepared, ref = prepare(recipe.trials_recipe() if args.trials else chosen(recipe))
    print(
        f"prepared: {len(prepared.train)} training examples (token fingerprint {prepared.fingerprint[:12]}), "
        f"{len(ref.values)} reference log-probs in {ref.path}"
    )
    return 0


def cmd_evaluate(args) -> int:
    from prefbench.eval.run import evaluate
    from prefbench.runner import chosen

    recipe = evaluation_recipe(args)
    print_evaluation(evaluate(recipe.trials_recipe() if args.trials else chosen(recipe), args.stage, args.unit))
    return 0


def cmd_launch(args) -> int:
    from prefbench.launch import done_tasks, launch, make_executor, plan
    from prefbench.results import run_dir

    recipe = evaluation_recipe(args)  # every problem found here, before any task starts
    gpus = args.gpus_per_unit if args.gpus_per_unit is not None else int(__import__("torch").cuda.is_available())
    options = dict(item.partition("=")[::2] for item in args.slurm_option)
    executor = make_executor(
        args.executor,
        args.parallel,
        gpus,
        run_dir(recipe).resolve(),
        slurm_options=options,
        ray_address=args.ray_address,
    )
    if done := done_tasks(recipe):
        print(f"done before, not queued again: {', '.join(sorted(done))}")
    launch(plan(args.recipe, args.overrides, recipe, gpus, done), executor)
    print(f"report: {Path(recipe.report_dir).resolve() / recipe.name / 'report.md'}")
    return 0


def evaluation_recipe(args):
    """The recipe of `run` and `evaluate`, checked in full; --retry-failed turns on judge.retry_failed."""
    import dataclasses

    from prefbench.check import load_recipe
    from prefbench.errors import RecipeError

    recipe = load_recipe(args.recipe, args.overrides, lookups=True)
    if args.retry_failed:
        if recipe.eval.judge is None:
            raise RecipeError(
                ["--retry-failed: the recipe has no eval.judge whose parse failures could be asked again"], args.recipe
            )
        recipe = dataclasses.replace(
            recipe,
            eval=dataclasses.replace(recipe.eval, judge=dataclasses.replace(recipe.eval.judge, retry_failed=True)),
        )
    return recipe


def cmd_generate_data(args) -> int:
    from prefbench.check import load_datagen
    from prefbench.onpolicy import generate_data

    stats = generate_data(load_datagen(args.recipe, args.overrides))
    print(
        f"{stats['prompts']} prompts x {stats['samples'] // max(stats['prompts'], 1)} samples: mean reward "
        f"{stats['mean_reward']:.3f}; {stats['pairs']} pairs ({stats['prompts_dropped_as_ties']} prompts dropped as ties); "
        f"{stats['unpaired']} unpaired, {stats['desirable_share']:.1%} desirable"
    )
    return 0


def cmd_report(args) -> int:
    from prefbench.report import write_report

    out = write_report(args.run_dir, args.out, args.prompts or 24)
    print(f"report: {out / 'report.md'} and {out / 'report.html'}")
    return 0


def cmd_push(args) -> int:
    from prefbench.cards import push

    print(f"pushed {args.unit_dir}/final with its model card: {push(args.unit_dir, args.repo_id, args.private)}")
    return 0


def cmd_export(args) -> int:
    from prefbench.export import export

    m = export(args.run_dir, args.format, args.out, args.sampling, args.sample)
    print(
        f"{m['format']}: {len(m['units'])} unit(s) x {m['prompts']} prompts, {m['sampling']} pass, sample {m['sample']} "
        f"-> {args.out}/{m['format']}/ (export.json says what was taken)"
    )
    if m["units_without_answers"]:
        print(f"not exported (no answers.jsonl): {', '.join(m['units_without_answers'])}")
    return 0


def cmd_compare(args) -> int:
    """Exit 1 on a regression (or, with --margin, a metric not shown non-inferior), so a CI job can act on it."""
    from prefbench.compare import FAILING, compare, verdict_table

    def per_metric(items: list[str], flag: str) -> dict[str, float]:
        out = {}
        for item in items:
            metric, sep, value = item.partition("=")
            try:
                out[metric.strip()] = float(value)
            except ValueError:
                raise ValueError(f"{flag} {item!r}: expected METRIC=NUMBER, e.g. reward=0.02") from None
        return out

    verdicts = compare(
        args.baseline,
        args.candidate,
        per_metric(args.threshold, "--threshold"),
        args.against,
        args.margin,
        per_metric(args.tolerance, "--tolerance"),
        args.allow_one_seed,
    )
    print(verdict_table(verdicts))
    failed = [v for v in verdicts if v.verdict in FAILING]
    kind = "not shown non-inferior" if args.margin is not None else "regression(s)"
    print(f"\n{len(failed)} {kind} in {len(verdicts)} comparison(s)")
    return 1 if failed else 0


def cmd_plan(args) -> int:
    """How many seeds and prompts resolve a difference of --effect, from a run's own variance components."""
    from prefbench import stats
    from prefbench.metric_table import PER_PROMPT, RANKED
    from prefbench.results import load_run, objective_tables, run_gens

    if args.metric not in RANKED:
        raise ValueError(f"--metric {args.metric!r}: plans are for a ranked metric, one of {sorted(RANKED)}")
    run = load_run(args.run_dir)
    tables = objective_tables(run_gens(run), PER_PROMPT[args.metric])
    if len(tables) < 2 or next(iter(tables.values())).shape[0] < 2:
        raise ValueError(
            f"{args.run_dir}: planning needs 2+ objectives evaluated with 2+ seeds each (run-to-run variation is "
            f"estimated from them); this run has {len(tables)} objective(s) with every seed, {len(run.manifest['recipe']['seeds'])} seed(s)"
        )
    c = stats.variance_components(tables)
    out = stats.plan(c, args.effect)
    k, m = c["objectives"], c["objectives"] * (c["objectives"] - 1) // 2
    print(f"{run.name}: {args.metric}, {k} objectives x {c['seeds']} seeds x {c['prompts']} prompts")
    print(
        f"variance components: a training run's shift sd {c['run'] ** 0.5:.4f}, objective x prompt sd {c['interaction'] ** 0.5:.4f}, "
        f"residual sd {c['residual'] ** 0.5:.4f}"
    )
    if c["run"] == 0 or c["interaction"] == 0:
        print(
            "  (a component floored at 0: the runs or prompts agree more than the noise alone implies, so the figures below lean on "
            "the residual; they can be more conservative than the report's 'could resolve', which reads the mean squares directly)"
        )
    now = out["now"]
    print(
        f"as it stands: a difference of {args.effect:g} between two objectives is resolved with power {now['power']:.2f}; "
        f"the smallest it resolves with power {out['power']:.0%} is {now['smallest']:.4f}"
    )
    print(f"to resolve {args.effect:g} with power {out['power']:.0%} after Holm over the {m} pairs:")
    for d in out["designs"]:
        said = f"{d['seeds']} seeds (power {d['power']:.2f})" if d["seeds"] else "more than 64 seeds"
        print(f"  {d['prompts']:>5} prompts: {said}")
    print(
        "(assumes the objectives' seed spreads alike, as the pooled error term does; power at Holm's strictest level)"
    )
    return 0


def _indices(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of prompt indices, e.g. 0,5,17"
        ) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prefbench", description="Train and compare LLM alignment objectives.")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, handler, help: str, recipe: bool = False) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help)
        c.set_defaults(handler=handler)
        if recipe:
            c.add_argument("recipe")
            c.add_argument(
                "--set",
                dest="overrides",
                action="append",
                default=[],
                metavar="KEY=VALUE",
                help="override a recipe value, e.g. train.lr=1e-5",
            )
        return c

    command("objectives", cmd_objectives, "list every objective: data kind, reference need, hyperparameters, paper")
    run = command(
        "run",
        cmd_run,
        "train every objective x seed of a recipe, evaluate, report (resumable: re-run after a kill)",
        recipe=True,
    )
    train = command(
        "train", cmd_train, "train one objective with one seed (the unit torchrun or a scheduler runs)", recipe=True
    )
    train.add_argument("--objective", required=True, help="the objective's label in the recipe (a trial's: LABEL.tK)")
    train.add_argument("--seed", type=int, required=True)
    command(
        "prepare",
        cmd_prepare,
        "tokenize the data and compute every unit's reference log-probs once (the first stage of a launch)",
        recipe=True,
    )
    command(
        "tune",
        cmd_tune,
        "choose each objective's settings on validation prompts (the recipe's tune section; prefbench run does it first)",
        recipe=True,
    ).add_argument("--retry-failed", action="store_true", help=argparse.SUPPRESS)
    command("check", cmd_check, "validate a recipe and print it resolved, without loading any model", recipe=True)
    evaluate = command(
        "evaluate",
        cmd_evaluate,
        "evaluate the reference and every trained checkpoint of a run (the recipe's eval section)",
        recipe=True,
    )
    evaluate.add_argument(
        "--unit",
        metavar="UNIT",
        help="evaluate only this unit (reference, or LABEL/seedK): its own part of the "
        "benchmarks, preference and generation stages; checkpoints after the reference",
    )
    evaluate.add_argument(
        "--stage",
        action="append",
        metavar="STAGE",
        help="run only this stage (repeatable; prefbench.eval.stages.STAGES names them); default: every stage the recipe asks for",
    )
    for c in (run, evaluate):
        c.add_argument(
            "--retry-failed", action="store_true", help="ask the judge again for the verdicts cached as parse failures"
        )
    for c in (train, evaluate, sub.choices["prepare"]):
        c.add_argument(
            "--trials", action="store_true", help="act on the recipe's tuning trials (its tune: section; <name>-tune)"
        )
    launch = command(
        "launch",
        cmd_launch,
        "run a recipe's units in parallel on an engine you run: local processes, Slurm (submitit) or Ray",
        recipe=True,
    )
    launch.add_argument("--executor", required=True, choices=["local", "slurm", "ray"])
    launch.add_argument("--parallel", type=int, default=2, help="units running at once (default 2)")
    launch.add_argument(
        "--gpus-per-unit",
        type=int,
        help="GPUs each unit gets (default 1 where CUDA is, else 0); above 1, training runs under torchrun",
    )
    launch.add_argument(
        "--slurm-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an sbatch option for every job, e.g. partition=gpu",
    )
    launch.add_argument("--ray-address", help="the Ray cluster to use (default: RAY_ADDRESS, else a local one)")
    launch.add_argument("--retry-failed", action="store_true", help=argparse.SUPPRESS)
    command(
        "generate-data",
        cmd_generate_data,
        "sample from a model, score with a reward, write paired + unpaired preference data",
        recipe=True,
    )
    report = command(
        "report", cmd_report, "render reports/<run>/report.md and report.html from a run directory's results"
    )
    report.add_argument("run_dir")
    report.add_argument("--out", default="reports", help="parent directory of the report (default: reports)")
    report.add_argument(
        "--prompts",
        type=_indices,
        metavar="I,J,...",
        help="the held-out prompts the answer viewer shows, by index (default: the first 24)",
    )
    push = command(
        "push", cmd_push, "upload a trained unit's checkpoint and model card (UNIT_DIR/final) to the Hugging Face Hub"
    )
    push.add_argument("unit_dir", help="a unit's directory, e.g. runs/kto_vs_dpo/dpo/seed0")
    push.add_argument(
        "--repo-id",
        required=True,
        help="the model repository, e.g. you/smollm2-dpo (created if missing; token from HF_TOKEN)",
    )
    push.add_argument("--private", action="store_true")
    export = command(
        "export",
        cmd_export,
        "write a run's answers in the layout AlpacaEval or Arena-Hard reads, one answer per prompt per unit",
    )
    export.add_argument("run_dir")
    export.add_argument("--format", required=True, choices=["alpaca_eval", "arena_hard"])
    export.add_argument("--out", required=True, help="directory the <format>/ folder is written in")
    export.add_argument(
        "--sampling", choices=["sampled", "greedy"], help="default: greedy where every unit has it, else sampled"
    )
    export.add_argument(
        "--sample", type=int, help="which sample of the pass (default 0; alone, it picks the sampled pass)"
    )
    plan = command(
        "plan", cmd_plan, "the seeds and prompts that resolve a given difference, from a run's variance components"
    )
    plan.add_argument("run_dir")
    plan.add_argument(
        "--effect",
        type=float,
        required=True,
        metavar="E",
        help="the difference between two objectives to resolve, in the metric's units",
    )
    plan.add_argument("--metric", default="reward", help="a ranked metric (default reward)")
    compare = command(
        "compare",
        cmd_compare,
        "paired, metric-by-metric verdicts of CANDIDATE against BASELINE; exit 1 on a regression",
    )
    compare.add_argument("baseline")
    compare.add_argument("candidate")
    compare.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="METRIC=VALUE",
        help="regression threshold per metric (defaults: reward=0.02, greedy_reward=0.02; kl ungated)",
    )
    compare.add_argument(
        "--against", metavar="LABEL", help="compare every candidate unit with this baseline objective label"
    )
    compare.add_argument(
        "--margin",
        type=float,
        metavar="M",
        help="non-inferiority: fail a gated metric whose 95%% interval reaches further than M on the worse side",
    )
    compare.add_argument(
        "--tolerance",
        action="append",
        default=[],
        metavar="METRIC=VALUE",
        help="numerical tolerance per metric: a smaller difference is no change whatever its p "
        "(defaults: reward=0.001, greedy_reward=0.001, kl=0.01)",
    )
    compare.add_argument(
        "--allow-one-seed",
        action="store_true",
        help="gate a retrained candidate with one seed on a side seed by seed (these two training runs only); "
        "refused by default (exit 2)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 1 a regression (compare), 2 bad input or a failure, named in one line."""
    args = parser().parse_args(argv)
    from prefbench.errors import PrefbenchError

    try:
        return args.handler(args)
    except (PrefbenchError, KeyError, OSError, RuntimeError, ValueError) as e:
        if os.environ.get("PREFBENCH_DEBUG"):
            raise
        print(f"prefbench: error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
