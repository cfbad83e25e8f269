"""Root conftest: the package's doctests (``--doctest-modules`` over hf_introspect/) run offline with a
throwaway HF cache, like the tests (tests/conftest.py does the same, per test, for tests/)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# huggingface_hub and datasets read these once, at import: set them before any module imports them.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"
_CACHE = tempfile.mkdtemp(prefix="hf_introspect-doctest-cache-")
os.environ.setdefault("HF_HOME", _CACHE)
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(_CACHE, "datasets"))
os.environ.setdefault("HF_INTROSPECT_CACHE", os.path.join(_CACHE, "gguf"))
atexit.register(shutil.rmtree, _CACHE, True)
