"""prefbench's offline lm-eval task packs (see packs.py)."""
