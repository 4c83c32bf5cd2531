"""squeezebert: SqueezeBERT and BERT inference in C, from Python.

    import squeezebert
    with squeezebert.Engine("path/to/model") as engine:
        print(engine.classify(["a fine day", "rain again"]))

docs/python.md describes the package; the engine itself is the C library libsqueezebert
(include/squeezebert.h, include/squeezebert_pipeline.h), bundled in the wheel.
"""

from ._native import SqueezeBertError
from .engine import Engine, backends, pick_backend
from .jsonl import dumps

__all__ = ["Engine", "SqueezeBertError", "backends", "dumps", "pick_backend"]
__version__ = "0.1.0"
