"""prefbench's command line: dispatch only; the work lives in the modules it calls."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys


def objectives_table() -> str:
    """One block per registered objective: data kind, reference need, version, hyperparameters, paper."""
    from prefbench.objectives import OBJECTIVES

    lines = []
    for name, cls in OBJECTIVES.items():
        params = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls) if f.init) or "(none)"
        ref = "reference" if cls.needs_reference else "reference-free"
        lines.append(f"{name:<18} {cls.data:<8} {ref:<14} v{cls.version}  {params}")
        lines.append(f"{'':<18} {cls.paper}")
    return "\n".join(lines)


def print_evaluation(results: dict[str, dict]) -> None:
    """One line per unit: sampled-pass reward with its 95% CI, difference vs reference, KL, length."""
    for name, m in results.items():
        s = m["sampled"]
        r, d, kl = s["reward"], s["reward_minus_reference"], m.get("kl", {})
        kl_text = f"{kl['mean']:.3f} [{kl['ci'][0]:.3f}, {kl['ci'][1]:.3f}]" if kl.get("mean") is not None else "n/a"
        print(f"{name:<24} reward {r['mean']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]  vs ref {d['mean']:+.3f} "
              f"[{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]  KL {kl_text}  words {s['length_words']['mean']:.1f}")


def check_recipe(path: str, overrides: list[str]) -> None:
    """Validate every section of a training or generate-data recipe, looking benchmark task names up in
    lm-eval's index and the judge's key variable up in the environment (seconds; no model loads, no engine
    starts), and print it resolved. Raises RecipeError with every problem, one line each."""
    import yaml

    from prefbench.recipe import load_any

    print(yaml.safe_dump(load_any(path, overrides, lookups=True).to_dict(), sort_keys=False))


def report_or_compare(args) -> int:
    from prefbench.errors import PrefbenchError

    try:
        if args.command == "report":
            from prefbench.report import write_report

            out = write_report(args.run_dir, args.out)
            print(f"report: {out / 'report.md'} and {out / 'report.html'}")
            return 0
        from prefbench.compare import compare, verdict_table

        thresholds = {}
        for item in args.threshold:
            metric, _, value = item.partition("=")
            thresholds[metric.strip()] = float(value)
        verdicts = compare(args.baseline, args.candidate, thresholds, args.against)
    except (PrefbenchError, OSError, ValueError, KeyError) as e:
        if os.environ.get("PREFBENCH_DEBUG"):
            raise
        print(f"prefbench: error: {e}", file=sys.stderr)
        return 2
    print(verdict_table(verdicts))
    regressed = [v for v in verdicts if v.verdict == "regressed"]
    print(f"\n{len(regressed)} regression(s) in {len(verdicts)} comparison(s)")
    return 1 if regressed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prefbench", description="Train and compare LLM alignment objectives.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("objectives", help="list every objective: data kind, reference need, hyperparameters, paper")
    run = sub.add_parser("run", help="train every objective x seed of a recipe (resumable: re-run after a kill)")
    train = sub.add_parser("train", help="train one objective with one seed (the unit torchrun or a scheduler runs)")
    check = sub.add_parser("check", help="validate every section of a recipe (benchmark task names and the judge's endpoint "
                                         "included) and print it resolved, without loading any model")
    report = sub.add_parser("report", help="render reports/<run>/report.md and report.html from a run directory's results")
    report.add_argument("run_dir")
    report.add_argument("--out", default="reports", help="parent directory of the report (default: reports)")
    compare = sub.add_parser("compare", help="paired, metric-by-metric verdicts of CANDIDATE against BASELINE; exit 1 on a regression")
    compare.add_argument("baseline")
    compare.add_argument("candidate")
    compare.add_argument("--threshold", action="append", default=[], metavar="METRIC=VALUE",
                         help="regression threshold per metric (defaults: reward=0.02, greedy_reward=0.02; kl ungated)")
    compare.add_argument("--against", metavar="LABEL", help="compare every candidate unit with this baseline objective label")
    evaluate = sub.add_parser("evaluate", help="generation metrics of the reference and every trained checkpoint of a run (eval.generation)")
    gen = sub.add_parser("generate-data", help="sample from a model, score with a task reward, write paired + unpaired preference data")
    for p in (run, train, check, evaluate, gen):
        p.add_argument("recipe")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value, e.g. train.lr=1e-5")
    train.add_argument("--objective", required=True, help="the objective's label in the recipe")
    train.add_argument("--seed", type=int, required=True)
    args = parser.parse_args(argv)

    if args.command == "objectives":
        print(objectives_table())
        return 0
    from prefbench.errors import PrefbenchError, RecipeError
    from prefbench.recipe import load_recipe

    if args.command in ("report", "compare"):
        return report_or_compare(args)

    try:
        if args.command == "generate-data":
            from prefbench.data.onpolicy import generate_data
            from prefbench.recipe import load_datagen

            stats = generate_data(load_datagen(args.recipe, args.overrides))
            print(f"{stats['prompts']} prompts x {stats['samples'] // max(stats['prompts'], 1)} samples: mean reward "
                  f"{stats['mean_reward']:.3f}; {stats['pairs']} pairs ({stats['prompts_dropped_as_ties']} prompts dropped as ties); "
                  f"{stats['unpaired']} unpaired, {stats['desirable_share']:.1%} desirable")
            return 0
        if args.command == "check":
            check_recipe(args.recipe, args.overrides)
            return 0
        recipe = load_recipe(args.recipe, args.overrides, lookups=args.command in ("run", "evaluate"))  # a train unit needs no lookups
        from prefbench.eval.run import evaluate
        from prefbench.runner import train_units

        if args.command == "evaluate":
            print_evaluation(evaluate(recipe))
            return 0
        if args.command == "train":
            if args.seed not in recipe.seeds:
                raise RecipeError([f"--seed {args.seed}: not among the recipe's seeds {list(recipe.seeds)}"], args.recipe)
            recipe.objective(args.objective)
            summaries = train_units(recipe, labels=[args.objective], seeds=[args.seed])
        else:
            summaries = train_units(recipe)
            evaluation = evaluate(recipe)
            from prefbench.report import write_report
            from prefbench.results import run_dir

            report_path = write_report(run_dir(recipe), recipe.report_dir)
    except (PrefbenchError, KeyError, OSError, RuntimeError, ValueError) as e:
        if os.environ.get("PREFBENCH_DEBUG"):
            raise
        print(f"prefbench: error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    for s in summaries:
        if s.get("final"):
            print(f"{s['label']:<20} seed {s['seed']}  loss {s['final']['loss']:.4f}  ({s['steps']} steps)")
    if args.command == "run":
        print_evaluation(evaluation)
        print(f"report: {report_path / 'report.md'} and {report_path / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
