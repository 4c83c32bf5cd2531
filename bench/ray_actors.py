"""Ray Data with 1 actor against 2 on this machine: the same job (squeezebert.ray.run, what
`python -m squeezebert.ray` does), lines per second of each (issue 15).

    python bench/ray_actors.py MODEL_DIR [--lines 4000] [--rounds 3] [--backend cpu]
                               [--setups "1:threads=2,2:threads=1"] [--batch-size 256]

MODEL_DIR: a checkpoint with tokenizer files. The input is `lines` JSON lines {"id", "text"} of
1 to 24 words. A setup is ACTORS[:DEVICE]: that many actors, each opening the backend on DEVICE
(for the cpu backend "threads=N"; empty: the backend's default, every core). One local Ray
cluster for the whole run (its start-up is not timed); the rounds run every setup in turn,
alternating the order, and each job's output is read back to check every id came back once.
Figures: lines / wall seconds of the job (read, answer, write), best of the rounds, with the
load average after each job. Ray's logical CPUs are the machine's cores, and the actors reserve
what `python -m squeezebert.ray` reserves by default: 1 CPU each, less where that would leave
none to the reader (docs/python.md).
"""

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402

from squeezebert.ray import default_cpus_per_actor, run  # noqa: E402

WORDS = ["fine", "rain", "day", "movie", "great", "terrible", "service", "ok", "never", "again",
         "good", "bad", "the", "a", "was", "not", "very", "word", "quick", "brown"]


def load_average() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


def write_input(path: Path, lines: int) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for i in range(lines):
            words = [WORDS[(i * 7 + k * 13) % len(WORDS)] for k in range(1 + i % 24)]
            out.write(json.dumps({"id": i, "text": " ".join(words)}) + "\n")


def answered_ids(folder: Path) -> List[int]:
    return sorted(json.loads(line)["id"] for f in folder.iterdir() if f.is_file()
                  for line in f.read_text(encoding="utf-8").splitlines())


def parse_setups(text: str) -> List[Tuple[int, str]]:
    setups = []
    for item in text.split(","):
        actors, _, device = item.partition(":")
        setups.append((int(actors), device))
    return setups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--lines", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--setups", default="1:threads=2,2:threads=1")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--save-input", metavar="PATH",
                        help="only write the input lines to PATH (for `sqz infer` on the same job)")
    args = parser.parse_args()
    if args.save_input:
        write_input(Path(args.save_input), args.lines)
        return

    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="sqz-ray-bench-"))
    source = work / "input.jsonl"
    write_input(source, args.lines)
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    print(f"{cores} cores, {args.lines} lines, backend {args.backend}, batch size {args.batch_size}; "
          f"load average at start: {load_average()}", flush=True)
    setups = parse_setups(args.setups)
    best: Dict[Tuple[int, str], float] = {}
    try:
        for r in range(args.rounds):
            for actors, device in (setups if r % 2 == 0 else setups[::-1]):
                out = work / "out"
                shutil.rmtree(out, ignore_errors=True)
                start = time.perf_counter()
                run(str(args.model), str(source), str(out), backend=args.backend, device=device or None,
                    actors=actors, cpus_per_actor=default_cpus_per_actor(actors, cores),
                    batch_size=args.batch_size)
                seconds = time.perf_counter() - start
                if answered_ids(out) != list(range(args.lines)):
                    raise SystemExit(f"{actors} actors: not every line answered exactly once")
                rate = args.lines / seconds
                best[(actors, device)] = max(best.get((actors, device), 0.0), rate)
                print(f"round {r + 1}: {actors} actor(s) {device or 'default'}: {seconds:.1f} s, "
                      f"{rate:.1f} lines/s; load average {load_average()}", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average at end: {load_average()}")
    print("| actors | device per actor | lines/s (best of %d) |" % args.rounds)
    print("|---:|---|---:|")
    for (actors, device), rate in best.items():
        print(f"| {actors} | {device or 'default'} | {rate:.1f} |")


if __name__ == "__main__":
    main()
