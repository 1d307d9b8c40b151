import os
import tempfile

# Tests build their models and reference caches in a private cache, never in the user's ~/.cache.
os.environ.setdefault("PREFBENCH_CACHE", tempfile.mkdtemp(prefix="prefbench-test-cache-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
