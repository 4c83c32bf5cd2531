#!/usr/bin/env bash
# Softmax vs linear attention over length (docs/variants.md): one layer of the full-size random
# SqueezeBERT (hidden 768, 12 heads of 64, groups 4) with a 4096-row position table, batch 1,
# lengths 128..4096, on each backend given, fp32; both attentions in one run. Prints the time
# per token of each, their ratio, and the growth per doubling of the length.
#
#   bench/variants_length.sh [SQZ_BINARY] [BACKENDS] [LENGTHS]
#   defaults: build/sqz, opencl,cpu, 128,256,512,1024,2048,4096
set -euo pipefail
sqz=${1:-build/sqz}
backends=${2:-opencl,cpu}
lengths=${3:-128,256,512,1024,2048,4096}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for attention in softmax linear; do
  preset=squeezebert-uncased+layers=1+positions=4096
  [[ $attention == linear ]] && preset+=+linear
  "$sqz" bench --random "$preset" --backends "$backends" --precisions fp32 --batch 1 --length "$lengths" \
    --mixed-batch none --no-validate --budget 1 --min-repeats 2 --peak-budget 0 --quiet \
    --csv "$out/$attention.csv" > /dev/null
done
python3 - "$out" <<'EOF'
import csv, sys
rows = {}
for attention in ("softmax", "linear"):
    for r in csv.DictReader(open(f"{sys.argv[1]}/{attention}.csv")):
        if r["status"] == "ok":
            rows[(r["backend"], attention, int(r["seq_len"]))] = float(r["p50_ms"]) * 1e3 / int(r["seq_len"])
backends = sorted({b for b, _, _ in rows})
print("| backend | length | softmax us/token | linear us/token | linear / softmax |")
print("|---|---:|---:|---:|---:|")
for b in backends:
    lengths = sorted({n for bb, _, n in rows if bb == b})
    for n in lengths:
        s, l = rows.get((b, "softmax", n)), rows.get((b, "linear", n))
        if s and l:
            print(f"| {b} | {n} | {s:.1f} | {l:.1f} | {l / s:.2f} |")
    for attention in ("softmax", "linear"):
        pts = [(n, rows[(b, attention, n)]) for n in lengths if (b, attention, n) in rows]
        growth = [b2 / a2 for (_, a2), (_, b2) in zip(pts, pts[1:])]
        print(f"{b} {attention}: time per token grows x" + ", x".join(f"{g:.2f}" for g in growth)
              + " per doubling of the length")
EOF
