#!/usr/bin/env python3
"""A load test of `sqz serve` on loopback (Python's standard library only).

Starts `sqz serve` on 127.0.0.1 on a free port, then for each client count in --clients runs that
many concurrent clients, each sending --requests POST /embed requests one after another on its own
keep-alive connection. Every request carries a text of its own ("request C-R: ..."), so an answer
can only be right for one request: each is checked against `sqz infer`'s embedding of that text
(computed beforehand, same backend, --tolerance), which catches answers lost, swapped between
requests or duplicated. The server's /metrics, read before and after each run, must have counted
exactly the requests sent as successes and run exactly as many items in its batches (none lost,
none run twice). Reports requests/s, p50/p99 latency and the batch sizes the server formed.

    serve_load.py --sqz build/sqz --model DIR [--backend cpu] [--clients 1,8,64] [--requests 20]
                  [--timeout 300] [--tolerance 1e-4] [--server-arg=--max-batch-tokens=4096 ...]

Exit status 0 when every check passed, 1 otherwise (each failure is printed), 2 for bad usage.
Bounded: a run that is not finished within --timeout seconds fails, and the server is stopped.
"""
import argparse
import http.client
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

# Base sentences; every request's text is one of these with a unique prefix.
SENTENCES = [
    "The committee met on Tuesday to discuss the budget for the city library.",
    "A man is playing a guitar on the corner of the street.",
    "Fresh snow fell overnight and the roads into the valley were closed.",
    "She finished the marathon in just under four hours.",
    "The new bridge will carry trains as well as cars and bicycles.",
    "Two dogs are running through a field of tall grass.",
    "The recipe calls for three eggs, a cup of flour and a pinch of salt.",
    "Scientists measured the temperature of the lake every morning for a year.",
    "ok",
    "The museum reopened after two years with a new wing for modern art, a cafe on the roof and "
    "longer opening hours on Fridays, which the visitors seem to like.",
    "He could not remember where he had left the keys.",
    "Prices rose sharply in the third quarter.",
]


def text_of(client, request):
    return "request %d-%d: %s" % (client, request, SENTENCES[(client * 7 + request) % len(SENTENCES)])


def percentile(sorted_values, fraction):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def references(args, texts, tmp):
    """sqz infer's normalised embedding of every text (the independent reference)."""
    src, out = os.path.join(tmp, "texts.jsonl"), os.path.join(tmp, "reference.jsonl")
    with open(src, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    subprocess.run([args.sqz, "infer", "--model", args.model, "--backend", args.backend, "--task", "embed",
                    "--normalize", "--input", src, "--output", out], check=True, stderr=subprocess.DEVNULL)
    with open(out, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    if len(records) != len(texts) or any("embedding" not in r for r in records):
        sys.exit("sqz infer did not embed every reference text")
    return {t: r["embedding"] for t, r in zip(texts, records)}


def start_server(sqz, model, options, log_path):
    """Starts `sqz serve --model MODEL --port 0 OPTIONS...` (its stderr into log_path) and waits
    until /health says ready; the process and its port. Also used by tests/test_serve_clients.py."""
    log = open(log_path, "w")
    proc = subprocess.Popen([sqz, "serve", "--model", model, "--port", "0"] + options, stderr=log)
    deadline = time.monotonic() + 120
    port = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit("sqz serve exited before it was ready: " + open(log_path).read())
        found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", open(log_path).read())
        if found:
            port = int(found.group(1))
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=5) as r:
                    if r.status == 200:
                        return proc, port
            except OSError:
                pass
        time.sleep(0.05)
    proc.kill()
    sys.exit("sqz serve was not ready within 120 s")


def metrics(port):
    """The server's counters and the batch-size histogram (cumulative buckets) from /metrics."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=30) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def batch_sizes(before, after):
    """Batches formed between two /metrics readings, by size bucket: {upper bound: count}."""
    pattern = re.compile(r'te_batch_next_size_bucket\{le="([^"]+)"\}')
    cumulative = []
    for name, value in after.items():
        m = pattern.fullmatch(name)
        if m and m.group(1) != "+Inf":
            cumulative.append((float(m.group(1)), value - before.get(name, 0)))
    cumulative.sort()
    buckets, below = {}, 0
    for bound, count in cumulative:
        if count - below > 0:
            buckets[int(bound)] = int(count - below)
        below = count
    return buckets


class Client(threading.Thread):
    def __init__(self, port, index, requests, want, tolerance, deadline):
        super().__init__(daemon=True)
        self.port, self.index, self.requests = port, index, requests
        self.want, self.tolerance, self.deadline = want, tolerance, deadline
        self.latencies, self.problems = [], []

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=max(1.0, self.deadline - time.monotonic()))
        try:
            for r in range(self.requests):
                if time.monotonic() > self.deadline:
                    self.problems.append("client %d: out of time before request %d" % (self.index, r))
                    return
                text = text_of(self.index, r)
                body = json.dumps({"inputs": text, "normalize": True})
                start = time.perf_counter()
                conn.request("POST", "/embed", body, {"Content-Type": "application/json"})
                answer = conn.getresponse()
                data = answer.read()
                self.latencies.append(time.perf_counter() - start)
                self.check(r, text, answer.status, data)
        except (OSError, http.client.HTTPException) as e:
            self.problems.append("client %d: %s" % (self.index, e))
        finally:
            conn.close()

    def check(self, r, text, status, data):
        where = "client %d request %d" % (self.index, r)
        if status != 200:
            self.problems.append("%s: status %d: %s" % (where, status, data[:200]))
            return
        got = json.loads(data)
        if not isinstance(got, list) or len(got) != 1:
            self.problems.append("%s: %d embeddings for one input" % (where, len(got)))
            return
        want = self.want[text]
        worst = max(abs(a - b) for a, b in zip(got[0], want)) if len(got[0]) == len(want) else math.inf
        if worst > self.tolerance:
            self.problems.append("%s: embedding differs from its text's reference by %.3g" % (where, worst))


def run(port, clients, requests, want, args):
    before = metrics(port)
    deadline = time.monotonic() + args.timeout
    threads = [Client(port, c, requests, want, args.tolerance, deadline) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 5)
    wall = time.perf_counter() - start
    after = metrics(port)
    problems = [p for t in threads for p in t.problems]
    if any(t.is_alive() for t in threads):
        problems.append("clients still waiting after --timeout %g s" % args.timeout)
    sent = clients * requests
    latencies = sorted(x for t in threads for x in t.latencies)
    answered = int(after["te_request_success"] - before["te_request_success"])
    items = int(after["te_batch_next_size_sum"] - before["te_batch_next_size_sum"])
    batches = int(after["te_batch_next_size_count"] - before["te_batch_next_size_count"])
    if len(latencies) != sent:
        problems.append("%d answers received for %d requests" % (len(latencies), sent))
    if answered != sent:
        problems.append("the server answered %d requests with 200, %d were sent" % (answered, sent))
    if items != sent:
        problems.append("the server ran %d items in its batches, %d were sent" % (items, sent))
    devices = {}
    for name, value in after.items():
        m = re.fullmatch(r'sqz_device_items\{index="(\d+)",device="([^"]*)"\}', name)
        if m:
            devices["%s:%s" % (m.group(1), m.group(2))] = int(value - before.get(name, 0))
    return {
        "clients": clients, "requests": sent, "wall_s": round(wall, 3),
        "requests_per_s": round(sent / wall, 1) if wall > 0 else None,
        "p50_ms": round(1000 * percentile(latencies, 0.50), 2),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 2),
        "batches": batches, "mean_batch": round(items / batches, 2) if batches else 0,
        "batch_sizes": batch_sizes(before, after), "items_per_device": devices,
        "loadavg": open("/proc/loadavg").read().split()[:3], "problems": problems,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sqz", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--clients", default="1,8,64", help="comma-separated client counts, one run each")
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed per run")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest difference from the reference embedding (batching changes the "
                             "order of float sums on optimised backends)")
    parser.add_argument("--server-arg", action="append", default=[], help="passed to sqz serve (repeatable)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    try:
        counts = [int(c) for c in args.clients.split(",")]
    except ValueError:
        parser.error("--clients takes numbers separated by commas, got %r" % args.clients)
    if min(counts) < 1 or args.requests < 1 or args.timeout <= 0:
        parser.error("--clients, --requests and --timeout must be positive")

    tmp = tempfile.mkdtemp(prefix="sqz-serve-load-")
    texts = [text_of(c, r) for c in range(max(counts)) for r in range(args.requests)]
    want = references(args, texts, tmp)
    proc, port = start_server(args.sqz, args.model, ["--backend", args.backend] + args.server_arg,
                              os.path.join(tmp, "serve.log"))
    results, failed = [], False
    try:
        for n in counts:
            result = run(port, n, args.requests, want, args)
            results.append(result)
            print("%3d clients x %d requests: %7.1f requests/s, p50 %7.2f ms, p99 %7.2f ms, %d batches "
                  "(mean %.2f items; sizes %s)%s; load %s" % (
                      n, args.requests, result["requests_per_s"], result["p50_ms"], result["p99_ms"],
                      result["batches"], result["mean_batch"],
                      ", ".join("<=%d: %d" % kv for kv in sorted(result["batch_sizes"].items())),
                      "; items per device %s" % result["items_per_device"] if len(result["items_per_device"]) > 1 else "",
                      " ".join(result["loadavg"])), flush=True)
            for p in result["problems"][:20]:
                print("  FAIL: " + p)
            failed |= bool(result["problems"])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "killed"
        shutil.rmtree(tmp, ignore_errors=True)
    if code != 0:
        print("FAIL: sqz serve exited %s after SIGTERM" % code)
        failed = True
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print("FAILED" if failed else "ok: every request answered once, with its own text's embedding")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
