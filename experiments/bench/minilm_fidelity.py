"""How harsh the label-free fidelity proxy is: dense MiniLM-L6 vs copies with whole layers removed, no recovery.

Real weights, real validation quotations (Debian's fortunes). Writes
``experiments/results/minilm_fidelity.md``.

    python -m experiments.bench.minilm_fidelity --sentences 500
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn

from autoprune.objective import model_fidelity, sentence_embeddings
from autoprune.zoo import load_encoder, load_text_data

from ._common import RESULTS, header, table

DROPS = ((), (5,), (0,), (2, 3), (1, 3, 5))


def main() -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "minilm_fidelity.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    enc = load_encoder("minilm")
    val = load_text_data("fortunes").tokenize(enc.tokenizer, max_length=128).val.subset(args.sentences)
    start = time.perf_counter()
    dense = sentence_embeddings(enc.model, val.batches(64, by_length=True))
    dense_s = time.perf_counter() - start
    rows = []
    for drop in DROPS:
        model = copy.deepcopy(enc.model)
        layers = model.encoder.encoder.layer
        model.encoder.encoder.layer = nn.ModuleList([layer for i, layer in enumerate(layers) if i not in drop])
        fid = model_fidelity(model, dense, val.batches(64, by_length=True))
        rows.append((", ".join(str(i + 1) for i in drop) or "none (dense)", 6 - len(drop), fid.cosine, fid.neighbour_agreement))
    text = (
        header("Fidelity of MiniLM-L6 with whole layers removed (no distillation)", args.threads)
        + f"{len(val)} validation quotations, max length 128, k = 10 neighbours; dense embeddings took {dense_s:.1f} s "
        + "(eager PyTorch, batches sorted by length).\n\n"
        + table(("layers removed (1-6)", "layers kept", "cosine", "10-NN agreement"), rows)
    )
    args.out.write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
