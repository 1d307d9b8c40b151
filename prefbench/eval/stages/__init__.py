"""The evaluation stages, in the order they run: one module each, behind one protocol (base.Stage). This list
feeds `evaluate`, `prefbench evaluate --stage`, `prefbench launch`'s plan and the finished-unit check; a new
stage is a module with its STAGE and one entry here."""

from prefbench.eval.stages import benchmarks, claims, curve, generation, judge, objectives, preference

STAGES = [
    benchmarks.STAGE,
    preference.STAGE,
    generation.STAGE,
    curve.STAGE,
    judge.STAGE,
    objectives.STAGE,
    claims.STAGE,
]
