"""The data layer before tokenisation: load, normalise, validate, split and transform records."""

from prefbench.data.load import (
    FIELDS,
    DataReport,
    detect_format,
    load_records,
    prompt_key,
    split_shared_prompt,
    train_eval_split,
    validate,
)
from prefbench.data.transforms import (
    drop_fraction,
    flip_labels,
    kto_class_weights,
    paired_to_unpaired,
)

__all__ = [
    "FIELDS",
    "DataReport",
    "detect_format",
    "drop_fraction",
    "flip_labels",
    "kto_class_weights",
    "load_records",
    "paired_to_unpaired",
    "prompt_key",
    "split_shared_prompt",
    "train_eval_split",
    "validate",
]
