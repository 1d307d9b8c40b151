"""Model cards: a README.md in every trained checkpoint (<unit>/final/), rendered from templates/model_card.md.jinja
with the objective and its paper, hyperparameters, training settings, data source and token fingerprint, the
unit's evaluation as the run's report shows it (its row and the reference's), and versions. The report writes
them (prefbench run, prefbench report), so a card always holds the numbers the report beside it shows;
`prefbench push` uploads a checkpoint with its card."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pandas as pd

from prefbench import models
from prefbench.objectives import OBJECTIVES
from prefbench.results import Run, UnitResults, atomic

TEMPLATE = Path(__file__).parent / "templates" / "model_card.md.jinja"


def render_card(run: Run, unit: UnitResults, table: pd.DataFrame) -> str:
    """The card of one trained unit; `table` is the report's unit table (report.unit_table)."""
    recipe, manifest = run.manifest["recipe"], run.manifest
    train = {**recipe["train"], **unit.summary.get("train", {})}  # the unit's own settings where it had them
    rows = table.loc[[u for u in ("reference", unit.name) if u in table.index]] if unit.generation else None
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(TEMPLATE.read_text()).render(
        run_name=run.name,
        unit=unit.name,
        objective=unit.objective,
        version=unit.version,
        seed=unit.seed,
        paper=OBJECTIVES[unit.objective].paper if unit.objective in OBJECTIVES else "",
        hyperparameters=unit.summary.get("hyperparameters", {}),
        model_name=recipe["model"]["name"],
        base_model=_hub_name(recipe["model"]["name"]),
        steps=train["steps"],
        batch_size=train["batch_size"],
        lr=train["lr"],
        schedule=train["schedule"],
        final_loss=f"{unit.summary['final']['loss']:.4f}" if unit.summary.get("final") else "n/a",
        data_source=recipe["data"]["source"] or "a mixture: " + ", ".join(m["source"] for m in recipe["data"]["mix"]),
        # a semi-online unit trained on its own samples of the data's prompts, not on the data's answers
        online=unit.summary.get("online"),
        online_kind="groups"
        if unit.objective in OBJECTIVES and OBJECTIVES[unit.objective].data == "grouped"
        else "pairs",
        reward=recipe.get("eval", {}).get("reward"),
        data_format=manifest["data"]["format"],
        train_examples=manifest["data"]["train_examples"],
        fingerprint=manifest["data"]["fingerprint"],
        table=rows.to_markdown() if rows is not None else "",
        versions=manifest.get("versions", {}),
    )


def _hub_name(spec: str) -> str:
    """The base model as the Hub names it: the embedded default is SmolLM2-135M-Instruct; a hub id is itself."""
    return "HuggingFaceTB/SmolLM2-135M-Instruct" if spec == models.EMBEDDED else spec


def write_cards(run: Run, table: pd.DataFrame) -> list[Path]:
    """final/README.md of every trained unit whose checkpoint is in the run directory (a stored baseline keeps
    none); the paths written."""
    written = []
    for unit in run.units:
        final = run.root / unit.name / "final"
        if unit.name == "reference" or not (final / "config.json").is_file():
            continue
        with atomic(final / "README.md") as tmp:
            tmp.write_text(render_card(run, unit, table))
        written.append(final / "README.md")
    return written


def push(unit_dir: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload <unit_dir>/final/ (the checkpoint and its card) to the Hugging Face Hub model repository `repo_id`,
    created if missing; the token comes from HF_TOKEN or `hf auth login`. Returns the repository's URL."""
    from huggingface_hub import HfApi  # deferred: only a hub download or push needs it

    final = Path(unit_dir) / "final"
    if not (final / "config.json").is_file():
        raise FileNotFoundError(f"{unit_dir}: no trained checkpoint (final/config.json) to push")
    if not (final / "README.md").is_file():
        raise FileNotFoundError(f"{final}: no model card yet (run `prefbench report` on the run directory first)")
    api = HfApi()
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(
        folder_path=str(final),
        repo_id=repo_id,
        repo_type="model",
        commit_message="prefbench: checkpoint and model card",
    )
    return str(url)
