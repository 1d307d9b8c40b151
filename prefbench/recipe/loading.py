"""YAML -> dataclasses, with typed, named errors: `_convert` checks types while it builds the specs (a value of the
wrong type is one problem and never reaches a spec: its field keeps the default, or a required field leaves the
spec unbuilt), so the specs' checks read every field without guarding its type. `--set a.b=value` overrides."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from prefbench.errors import RecipeError
from prefbench.recipe.choices import _unknown_key
from prefbench.recipe.sections import DataGenSpec, ObjectiveSpec, OnlineSpec, TrainSpec, TuneSpec
from prefbench.recipe.spec import Recipe

# ---- YAML -> dataclasses, with typed, named errors -------------------------------------------

_BAD = object()  # what _convert returns for a value it refused (the problem is recorded)


def _convert(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    """`value` as type `tp`, or _BAD with one problem recorded. Choices (Literal) are checked by problems()."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        return _convert(value, inner, path, problems)
    if origin is Literal:
        return _convert(value, type(get_args(tp)[0]), path, problems)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {type(value).__name__}")
            return _BAD
        return _build(tp, value, path, problems)
    if origin is tuple:
        return _convert_tuple(value, get_args(tp), path, problems)
    if tp is Any:
        return value
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {type(value).__name__}")
            return _BAD
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 5e-6 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, tp) or (tp in (int, float) and isinstance(value, bool)):
        problems.append(f"{path}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return _BAD
    return value


def _convert_tuple(value: Any, args: tuple, path: str, problems: list[str]) -> Any:
    """A list as a tuple; any refused item refuses the whole list (its field keeps its default)."""
    if not isinstance(value, (list, tuple)):
        problems.append(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        return _BAD
    if len(args) == 2 and args[1] is Ellipsis:
        args = (args[0],) * len(value)
    elif len(value) != len(args):
        problems.append(f"{path}: expected {len(args)} values, got {len(value)}")
        return _BAD
    items = tuple(_convert(v, a, f"{path}[{i}]", problems) for i, (v, a) in enumerate(zip(value, args)))
    return _BAD if any(item is _BAD for item in items) else items


def _build(cls: type, raw: dict, path: str, problems: list[str]) -> Any:
    """cls from a mapping: unknown keys and refused values are problems; refused values keep their
    defaults; _BAD when a required field is missing or refused."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs, refused = {}, set()
    prefix = f"{path}." if path else ""
    for key, value in raw.items():
        if key not in fields:
            problems.append(_unknown_key(prefix, str(key), list(fields)))
            continue
        converted = _convert(value, hints[key], f"{prefix}{key}", problems)
        if converted is _BAD:
            refused.add(key)
        else:
            kwargs[key] = converted
    required = [
        n for n, f in fields.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    problems += [f"{prefix}{name}: required" for name in required if name not in kwargs and name not in refused]
    return cls(**kwargs) if all(name in kwargs for name in required) else _BAD


def _objectives(raw: Any, problems: list[str]) -> tuple[ObjectiveSpec, ...]:
    """The objectives list as specs; their names and hyperparameters are the registry's to check and convert
    (prefbench.check). A malformed entry refuses the whole list, so later problems keep their entry's index."""
    if not isinstance(raw, list) or not raw:
        problems.append("objectives: expected a non-empty list of {name: ..., <hyperparameter>: ...}")
        return ()
    specs = []
    for i, entry in enumerate(raw):
        entry = {"name": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or "name" not in entry:
            problems.append(f"objectives[{i}]: expected a mapping with a 'name' (one of `prefbench objectives`)")
            continue
        hp = {k: v for k, v in entry.items() if k not in ("name", "label", "train", "online")}
        name, label = str(entry["name"]), str(entry.get("label", entry["name"]))
        train = _objective_train(entry.get("train", {}), f"objectives[{i}].train", problems)
        online = _convert(entry.get("online"), OnlineSpec | None, f"objectives[{i}].online", problems)
        online = None if online is _BAD else online
        specs.append(ObjectiveSpec(name=name, label=label, hyperparameters=hp, train=train, online=online))
    return tuple(specs) if len(specs) == len(raw) else ()


def _objective_train(raw: Any, at: str, problems: list[str]) -> dict[str, Any]:
    """An objective's own training settings (TrainSpec.PER_OBJECTIVE), converted like the train section's; its
    values are checked with the run's others by Recipe.problems."""
    if not isinstance(raw, dict):
        problems.append(f"{at}: expected a mapping of {', '.join(TrainSpec.PER_OBJECTIVE)}")
        return {}
    hints, out = typing.get_type_hints(TrainSpec), {}
    for key, value in raw.items():
        if key not in TrainSpec.PER_OBJECTIVE:
            problems.append(
                _unknown_key(f"{at}.", str(key), list(TrainSpec.PER_OBJECTIVE))
                + " (the rest of train is the run's: every objective sees identical data)"
            )
        elif (converted := _convert(value, hints[key], f"{at}.{key}", problems)) is not _BAD:
            out[key] = converted
    return out


def _apply_override(raw: dict, assignment: str, problems: list[str]) -> None:
    """`a.b=value`, value parsed as YAML (so 1e-5, true, [0, 1] keep their types)."""
    if "=" not in assignment:
        problems.append(f"--set {assignment}: expected key.path=value")
        return
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            problems.append(f"--set {key}: {part!r} is not a mapping or a valid list index")
            return
    value = yaml.safe_load(text)
    if isinstance(node, list) and parts[-1].isdigit():
        node[int(parts[-1])] = value
    elif isinstance(node, dict):
        node[parts[-1]] = value
    else:
        problems.append(f"--set {key}: cannot set a key inside {type(node).__name__}")


SHIPPED = Path(__file__).parent.parent / "recipes"  # the recipes that ship with the package


def read_yaml(path: Path) -> dict:
    """A recipe file as a mapping, its name defaulting to the file's stem; one-line errors. A relative path that
    is not there, named as in the repo (`recipes/<file>` or `<file>`), is the shipped recipe of that file name."""
    path = Path(path)
    if not path.is_file() and not path.is_absolute() and str(path.parent) in (".", "recipes"):
        path = SHIPPED / path.name if (SHIPPED / path.name).is_file() else path
    if not path.is_file():
        raise RecipeError([f"recipe file not found: {path}"], str(path))
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError([f"not valid YAML: {e}".replace("\n", " ")], str(path)) from None
    if not isinstance(raw, dict):
        raise RecipeError(["the recipe must be a YAML mapping"], str(path))
    raw.setdefault("name", path.stem)
    return raw


def is_datagen(raw: dict) -> bool:
    """A `prefbench generate-data` recipe: one with `out` and no `objectives`."""
    return "out" in raw and "objectives" not in raw


def build_recipe(raw: dict, overrides: list[str] = ()) -> tuple[Recipe | None, list[str]]:
    """A training recipe from its mapping after the overrides (`--set a.b=value`), and the schema's problems
    (the recipe is None where a required value is missing or refused). prefbench.check adds the registries'."""
    problems: list[str] = []
    raw = dict(raw)
    for assignment in overrides:
        _apply_override(raw, assignment, problems)
    objectives = _objectives(raw.pop("objectives", None), problems)
    raw["objectives"] = []
    recipe = _build(Recipe, raw, "", problems)
    if recipe is _BAD:
        return None, problems
    recipe = dataclasses.replace(recipe, objectives=objectives)
    if recipe.tune is not None:
        recipe = dataclasses.replace(recipe, tune=_typed_space(recipe.tune, problems))
    return recipe, problems + recipe.problems()


def _typed_space(tune: TuneSpec, problems: list[str]) -> TuneSpec:
    """The search spaces' training settings converted as the train section's are (YAML 1.1 reads 1e-5 as a string);
    hyperparameters are converted by their objective (prefbench.check)."""
    hints, space = typing.get_type_hints(TrainSpec), {}
    for label, dims in tune.space.items():
        if not isinstance(dims, dict):
            space[label] = dims
            continue
        space[label] = {
            key: [
                c
                for i, v in enumerate(values)
                if (c := _convert(v, hints[key], f"tune.space.{label}.{key}[{i}]", problems)) is not _BAD
            ]
            if key in TrainSpec.PER_OBJECTIVE and isinstance(values, list)
            else values
            for key, values in dims.items()
        }  # a refused value is a problem listed, and left out of the space
    return dataclasses.replace(tune, space=space)


def build_datagen(raw: dict, overrides: list[str] = ()) -> tuple[DataGenSpec | None, list[str]]:
    """A `prefbench generate-data` recipe, as build_recipe builds a training one."""
    problems: list[str] = []
    raw = dict(raw)
    for assignment in overrides:
        _apply_override(raw, assignment, problems)
    spec = _build(DataGenSpec, raw, "", problems)
    return (None, problems) if spec is _BAD else (spec, problems + spec.problems())
