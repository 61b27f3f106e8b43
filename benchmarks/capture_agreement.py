"""Does `hotexperts bench llamacpp --capture` record the routing llama.cpp computed? Check it on a GPU build.

Runs `bench llamacpp MODEL --placement P --capture` (routing recorded in an untimed pass of the bench's
pseudo-random tokens) and, independently, the tracer (`hotexperts.tracer.capture.run_capture`) on the same
prompt ids with every layer on the GPU (`n_gpu_layers` 999), then compares the prompt's expert ids per
token and layer. With the same backend for a layer the ids should agree exactly; where the placement
computes a layer's router on another backend (the router and attention stay on the GPU under
`n-cpu-moe`, only the expert mat-muls move), near-ties may flip. Prints and writes (``--out``):
``{placement, prompt_tokens, layers, rows, equal_rows, equal_share, equal_sets_share, per_layer_equal_share,
present_equal, bench, n_tokens}``.

    python benchmarks/capture_agreement.py MODEL.gguf [--placement n-cpu-moe=3] [--prompt-tokens 256]
        [--gen-tokens 16] [--seed 7] [--out capture.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

# isort: off
import llama_cpp  # noqa: F401  # NOTE: before numpy (hotexperts/_llamafirst.py)
import numpy as np
# isort: on

from hotexperts._atomic import write_text_atomic
from hotexperts.llamabench import bench_llamacpp
from hotexperts.tracer.capture import run_capture
from hotexperts.tracer.trace import Trace


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--placement", default="n-cpu-moe=3")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--gen-tokens", type=int, default=16)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--n-gpu-layers", type=int, default=999, help="of the independent tracer run")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp())
    r = bench_llamacpp(a.model, placement=a.placement, prompt_tokens=a.prompt_tokens, gen_tokens=a.gen_tokens,
                       reps=1, capture_path=tmp / "bench.hxt", seed=a.seed)
    tr = Trace.load(tmp / "bench.hxt")
    import gguf

    n_vocab = len(gguf.GGUFReader(a.model, "r").fields["tokenizer.ggml.tokens"].data)
    prompt = [int(t) for t in np.random.default_rng(a.seed).integers(0, n_vocab, a.prompt_tokens)]
    ref = run_capture(a.model, [prompt], n_predict=0, n_ctx=a.prompt_tokens + 16, n_ubatch=512,
                      n_gpu_layers=a.n_gpu_layers).trace
    pre = np.asarray(tr.phase) == 0
    got, want = np.asarray(tr.experts)[pre], np.asarray(ref.experts)
    present = np.asarray(tr.present)[pre] & np.asarray(ref.present)
    eq = (got == want).all(axis=2) & present
    sets = (np.sort(got, axis=2) == np.sort(want, axis=2)).all(axis=2) & present
    rows = int(present.sum())
    out = {
        "placement": a.placement, "prompt_tokens": a.prompt_tokens, "layers": int(got.shape[1]),
        "n_tokens": int(tr.n_tokens), "rows": rows, "equal_rows": int(eq.sum()),
        "equal_share": float(eq.sum() / max(rows, 1)), "equal_sets_share": float(sets.sum() / max(rows, 1)),
        "per_layer_equal_share": [float(eq[:, j].sum() / max(present[:, j].sum(), 1)) for j in range(got.shape[1])],
        "present_equal": bool((np.asarray(tr.present)[pre] == np.asarray(ref.present)).all()),
        "bench": {k: r[k] for k in ("decode_tok_s", "prefill_tok_s", "device", "overridden_tensors")},
    }
    print(json.dumps({k: v for k, v in out.items() if k != "bench"}, indent=1))
    if a.out:
        write_text_atomic(a.out, json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
