"""One-shot device probe: which host dtype lets the CPU expert path stream weights fast enough.

Run standalone on the GPU host (``python3 runtime/probe.py OUTDIR``); needs only torch. It measures,
for one Qwen3.5-122B-shaped layer (8 experts of gate/up 2 x 1024 x 3072 and down 3072 x 1024, batch 1):
the CPU expert time with fp32, bf16, fp16, int8 weight-only (``torch._weight_int8pack_mm``) and
fbgemm dynamic int8 linear weights, at several thread counts; host DRAM read bandwidth; pinned and
pageable host->device bandwidth; the GPU gathered-slot grouped expert time; a device round trip.
The results informed the engine's host dtype (docs/runtime.md). NOTE: each pool is a few times the 300 MB
L3 of the H200 host at most, so small pools (int8: 453 MB) include cache hits; calibrate measures from GBs.
Prints a table, writes probe.json.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F

H, FF, K = 3072, 1024, 8
N_POOL = 48  # experts per dtype pool: several times the last-level cache


def _median_time(fn: Any, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def cpu_variants() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {}
    x32 = torch.randn(1, H, generator=g)

    def make(kind: str) -> tuple[Any, int]:
        wgu = torch.randn(N_POOL, 2 * FF, H, generator=g) * 0.02
        wd = torch.randn(N_POOL, H, FF, generator=g) * 0.02
        if kind in ("fp32", "bf16", "fp16"):
            dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[kind]
            wgu, wd = wgu.to(dt).contiguous(), wd.to(dt).contiguous()
            nbytes = (wgu[0].numel() + wd[0].numel()) * wgu.element_size()
            x = x32.to(dt)

            def layer(i: int) -> torch.Tensor:
                y = torch.zeros(1, H, dtype=dt)
                for e in range(i, i + K):
                    gu = F.linear(x, wgu[e])
                    h = F.silu(gu[:, :FF]) * gu[:, FF:]
                    y += F.linear(h, wd[e])
                return y

            return layer, nbytes
        if kind.startswith("int8pack"):
            act = torch.bfloat16 if kind.endswith("bf16") else torch.float32
            sgu = wgu.abs().amax(dim=2) / 127.0
            sd = wd.abs().amax(dim=2) / 127.0
            qgu = torch.round(wgu / sgu[:, :, None]).to(torch.int8).contiguous()
            qd = torch.round(wd / sd[:, :, None]).to(torch.int8).contiguous()
            sgu, sd = sgu.to(act), sd.to(act)
            nbytes = qgu[0].numel() + qd[0].numel()
            x = x32.to(act)

            def layer(i: int) -> torch.Tensor:
                y = torch.zeros(1, H, dtype=act)
                for e in range(i, i + K):
                    gu = torch._weight_int8pack_mm(x, qgu[e], sgu[e])
                    h = F.silu(gu[:, :FF]) * gu[:, FF:]
                    y += torch._weight_int8pack_mm(h, qd[e], sd[e])
                return y

            return layer, nbytes
        if kind == "fbgemm":
            from torch.ao.nn.quantized.dynamic import Linear as QLinear

            mods = []
            for e in range(N_POOL):
                pair = []
                for w in (wgu[e], wd[e]):
                    s = (w.abs().amax(dim=1) / 127.0).double()
                    q = torch.quantize_per_channel(w, s, torch.zeros_like(s, dtype=torch.long), 0, torch.qint8)
                    m = QLinear(w.shape[1], w.shape[0], bias_=False)
                    m.set_weight_bias(q, None)
                    pair.append(m)
                mods.append(pair)
            nbytes = wgu[0].numel() + wd[0].numel()

            def layer(i: int) -> torch.Tensor:
                y = torch.zeros(1, H)
                for e in range(i, i + K):
                    gu = mods[e][0](x32)
                    h = F.silu(gu[:, :FF]) * gu[:, FF:]
                    y += mods[e][1](h)
                return y

            return layer, nbytes
        raise ValueError(kind)

    for kind in ("fp32", "bf16", "fp16", "int8pack_bf16", "int8pack_fp32", "fbgemm"):
        try:
            layer, nbytes = make(kind)
        except Exception as exc:  # noqa: BLE001 - a probe records what fails
            out[kind] = {"error": repr(exc)}
            print(f"{kind}: {exc!r}", flush=True)
            continue
        res: dict[str, Any] = {"expert_bytes": nbytes}
        for th in (1, 4, 8, 16):
            torch.set_num_threads(th)
            starts = list(range(0, N_POOL - K + 1, K))
            for s in starts:
                layer(s)
            it = iter(range(10**9))

            def run(layer: Any = layer, it: Any = it, starts: list[int] = starts) -> None:
                layer(starts[next(it) % len(starts)])

            t = _median_time(run, 30)
            res[f"t{th}_ms"] = t * 1e3
            res[f"t{th}_gbs"] = K * nbytes / t / 1e9
        out[kind] = res
        print(kind, {k: round(v, 3) for k, v in res.items()}, flush=True)
        del layer
    torch.set_num_threads(os.cpu_count() or 1)
    return out


def dram_read() -> dict[str, float]:
    a = torch.ones(1 << 30)  # 4 GiB fp32
    res = {}
    for th in (1, 8, 16):
        torch.set_num_threads(th)
        a.sum()
        t = _median_time(lambda: a.sum(), 5)
        res[f"threads{th}_gbs"] = a.numel() * 4 / t / 1e9
    torch.set_num_threads(os.cpu_count() or 1)
    print("dram", res, flush=True)
    return res


def gpu_part() -> dict[str, Any]:
    dev = torch.device("cuda")
    res: dict[str, Any] = {"name": torch.cuda.get_device_name(0)}
    bw: dict[str, float] = {}
    for mb in (1, 4, 9, 16, 64, 256):
        n = mb << 20
        dst = torch.empty(n, dtype=torch.uint8, device=dev)
        for pinned in (True, False):
            src = torch.ones(n, dtype=torch.uint8, pin_memory=pinned)
            dst.copy_(src, non_blocking=pinned)
            torch.cuda.synchronize()

            def cp(src: torch.Tensor = src, dst: torch.Tensor = dst, pinned: bool = pinned) -> None:
                dst.copy_(src, non_blocking=pinned)
                torch.cuda.synchronize()

            t = _median_time(cp, 20)
            bw[f"{'pinned' if pinned else 'pageable'}_{mb}MB_gbs"] = n / t / 1e9
    res["h2d"] = bw
    print("h2d", {k: round(v, 1) for k, v in bw.items()}, flush=True)
    # round trip
    z = torch.zeros(1, device=dev)
    res["item_us"] = _median_time(lambda: (z + 1).item(), 200) * 1e6
    # gathered grouped experts: int8 slots -> bf16, bmm
    slots = 64
    qgu = torch.randint(-127, 127, (slots, 2 * FF, H), dtype=torch.int8, device=dev)
    qd = torch.randint(-127, 127, (slots, H, FF), dtype=torch.int8, device=dev)
    sgu = torch.rand(slots, 2 * FF, device=dev, dtype=torch.bfloat16) * 1e-3
    sd = torch.rand(slots, H, device=dev, dtype=torch.bfloat16) * 1e-3
    x = torch.randn(1, H, device=dev, dtype=torch.bfloat16)
    grouped: dict[str, float] = {}
    for n in (1, 2, 4, 8):
        idx = torch.randperm(slots, device=dev)[:n]
        w = torch.rand(n, device=dev, dtype=torch.bfloat16)

        def run(idx: torch.Tensor = idx, w: torch.Tensor = w) -> torch.Tensor:
            gu = torch.bmm(qgu[idx].to(torch.bfloat16), x.expand(idx.numel(), H)[:, :, None])[:, :, 0]
            gu = gu * sgu[idx]
            h = F.silu(gu[:, :FF]) * gu[:, FF:]
            d = torch.bmm(qd[idx].to(torch.bfloat16), h[:, :, None])[:, :, 0] * sd[idx]
            return (d * w[:, None]).sum(0)

        for _ in range(5):
            run()
        torch.cuda.synchronize()

        def timed(run: Any = run) -> None:
            run()
            torch.cuda.synchronize()

        grouped[f"n{n}_us"] = _median_time(timed, 50) * 1e6
    res["grouped_int8_gather_bmm"] = grouped
    print("grouped", grouped, "item_us", res["item_us"], flush=True)
    return res


def main() -> None:
    outdir = sys.argv[1] if len(sys.argv) > 1 else "."
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "config": torch.__config__.parallel_info(),
    }
    print(info["torch"], info["cpu_count"], info["threads"], flush=True)
    os.makedirs(outdir, exist_ok=True)
    for key, fn in (("dram", dram_read), ("cpu", cpu_variants), ("gpu", gpu_part)):
        if key == "gpu" and not torch.cuda.is_available():
            continue
        try:
            info[key] = fn()
        except Exception as exc:  # noqa: BLE001 - a probe records what fails
            info[key] = {"error": repr(exc)}
            print(key, "failed:", repr(exc), flush=True)
    with open(os.path.join(outdir, "probe.json"), "w") as fh:
        json.dump(info, fh, indent=1)
    print("\nkind            " + " ".join(f"{t:>9}" for t in ("1thr", "4thr", "8thr", "16thr")) + "  (GB/s)")
    for kind, r in info["cpu"].items():
        if not isinstance(r, dict) or "error" in r:
            print(f"{kind:15s} error")
            continue
        print(f"{kind:15s} " + " ".join(f"{r[f't{t}_gbs']:9.1f}" for t in (1, 4, 8, 16)))


if __name__ == "__main__":
    main()
