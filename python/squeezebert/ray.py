"""Ray Data over the engine: `Dataset.map_batches(squeezebert.ray.Predictor, ...)`, one engine per
actor (the model loaded once per actor), and `python -m squeezebert.ray` for the common job:

    python -m squeezebert.ray --model DIR --input texts.jsonl --output out/ [--actors 2]

Batching inside a Ray batch, the answers and their errors are the library's (Engine.answers);
each actor's engine takes the device Ray gives it: with num_gpus=1 per actor Ray sets
CUDA_VISIBLE_DEVICES to the actor's GPU, which is then the backend's device 0. docs/python.md
has the details and an example.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .engine import Engine
from .jsonl import dumps


class Predictor:
    """A callable class for Dataset.map_batches (batch_format "numpy" or "pandas").

    Every input column is kept (ids and the like); the text column (and pair column: for qa the
    question and the context) is read, and the answers are added as columns:
      - task "embed": "embedding" (float32 [n, dim]; NaN rows where "error" is set);
      - other tasks: "answer", the answer's fields as the JSON text `sqz infer` writes them;
      - every task: "error", "" or why that row has no answer.
    """

    def __init__(self, model_dir: str, task: str = "auto", backend: str = "auto",
                 device: Optional[str] = None, precision: str = "fp32", text_column: str = "text",
                 pair_column: Optional[str] = None, **engine_options: Any):
        self.engine = Engine(model_dir, backend=backend, device=device, precision=precision,
                             **engine_options)
        self.task = self.engine.task if task == "auto" else task
        self.text_column = text_column
        self.pair_column = pair_column or ("context" if self.task == "qa" else None)
        if self.task == "qa" and text_column == "text":
            self.text_column = "question"

    def _column(self, batch: Any, name: str) -> List[Any]:
        if name not in batch:
            raise KeyError(f"the batch has no column '{name}' (columns: {', '.join(map(str, batch.keys()))})")
        return list(batch[name])

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        texts = [str(t) for t in self._column(batch, self.text_column)]
        pairs: Optional[Sequence[Optional[str]]] = None
        if self.pair_column:
            pairs = [None if p is None else str(p) for p in self._column(batch, self.pair_column)]
        answers = self.engine.answers(texts, pairs, task=self.task)
        out = {name: batch[name] for name in batch.keys()}
        out["error"] = np.array([a.get("error", "") for a in answers], dtype=object)
        if self.task == "embed":
            dim = next((len(a["embedding"]) for a in answers if "embedding" in a), 0)
            rows = np.full((len(answers), dim), np.nan, dtype=np.float32)
            for i, a in enumerate(answers):
                if "embedding" in a:
                    rows[i] = a["embedding"]
            out["embedding"] = rows
        else:
            out["answer"] = np.array(["" if "error" in a else dumps(a) for a in answers], dtype=object)
        return out


def run(model: str, input_path: str, output_path: str, *, task: str = "auto", backend: str = "auto",
        device: Optional[str] = None, actors: int = 1, gpus_per_actor: float = 0,
        cpus_per_actor: float = 1, batch_size: int = 256, text_column: str = "text",
        pair_column: Optional[str] = None, output_format: str = "") -> None:
    """Reads JSON Lines or Parquet (by extension), answers every row with `actors` engines and
    writes the rows with their answer columns (Parquet when the output ends in .parquet or the
    input is Parquet, else JSON Lines) into the folder `output_path`."""
    import ray

    parquet_in = input_path.endswith(".parquet")
    data = ray.data.read_parquet(input_path) if parquet_in else ray.data.read_json(input_path)
    answered = data.map_batches(
        Predictor, batch_format="numpy", batch_size=batch_size, concurrency=actors,
        num_gpus=gpus_per_actor, num_cpus=cpus_per_actor,
        fn_constructor_kwargs={"model_dir": model, "task": task, "backend": backend, "device": device,
                               "text_column": text_column, "pair_column": pair_column})
    fmt = output_format or ("parquet" if parquet_in or output_path.endswith(".parquet") else "json")
    if fmt == "parquet":
        answered.write_parquet(output_path)
    else:
        answered.write_json(output_path)


def default_cpus_per_actor(actors: int, cluster_cpus: float) -> float:
    """1 CPU per actor, less where that would reserve every CPU of the cluster: Ray's read and
    write tasks need one, and without it the job waits forever (2 actors on a 2-CPU machine)."""
    return min(1.0, max(cluster_cpus - 1, 0) / max(actors, 1))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m squeezebert.ray",
        description="Answer every row of a JSON Lines or Parquet file on a Ray cluster (ray.init() "
                    "joins the running one, or starts a local one), one squeezebert engine per actor.")
    parser.add_argument("--model", required=True, help="checkpoint folder, readable by every node")
    parser.add_argument("--input", required=True, help="a .jsonl/.json or .parquet file or folder")
    parser.add_argument("--output", required=True, help="a folder for the answered rows")
    parser.add_argument("--task", default="auto", choices=["auto", "classify", "embed", "tokens", "qa", "fill-mask"])
    parser.add_argument("--backend", default="auto", help="as sqz --backend (default auto)")
    parser.add_argument("--device", default=None,
                        help="as sqz --device, for every actor (threads=N: the cpu backend's threads)")
    parser.add_argument("--actors", type=int, default=1, help="engines (actors) at once")
    parser.add_argument("--gpus-per-actor", type=float, default=0,
                        help="1 for one actor per GPU (Ray assigns each its own)")
    parser.add_argument("--cpus-per-actor", type=float, default=None,
                        help="CPUs Ray reserves per actor (default: 1, less where the actors would "
                             "take every CPU of the cluster and leave none to its readers)")
    parser.add_argument("--batch-size", type=int, default=256, help="rows per map_batches call")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--pair-column", default=None)
    parser.add_argument("--format", choices=["json", "parquet"], default="", dest="output_format")
    args = parser.parse_args(argv)
    import ray

    ray.init()
    cpus_per_actor = args.cpus_per_actor
    if cpus_per_actor is None:
        cpus_per_actor = default_cpus_per_actor(args.actors, ray.cluster_resources().get("CPU", 1))
    run(args.model, args.input, args.output, task=args.task, backend=args.backend, device=args.device,
        actors=args.actors, gpus_per_actor=args.gpus_per_actor, cpus_per_actor=cpus_per_actor,
        batch_size=args.batch_size, text_column=args.text_column, pair_column=args.pair_column,
        output_format=args.output_format)
    return 0


if __name__ == "__main__":
    sys.exit(main())
