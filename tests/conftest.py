import os
import pathlib

# The test suite keeps its kernel cache inside the repository's cache/ folder (ignored by git).
os.environ.setdefault("ZYX_CACHE_DIR", str(pathlib.Path(__file__).resolve().parent.parent / "cache"))
