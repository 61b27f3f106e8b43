"""Reader for the per-request JSON files of the "Patterns behind Chaos" dataset (``chaos-json``).

Yu et al., arXiv 2510.05497, Hugging Face dataset ``core12345/MoE_expert_selection_trace`` (Llama-4-Maverick,
DeepSeek-R1, Qwen3-235B, Kimi-K2); the shared sample is github.com/andronius-yang/cse223b-proj's MMLU
subset of the Maverick traces. One file per request, ``<n>.json``: a JSON list of steps, each an object
``{"<layer>": value}`` over every layer of the model. Step 0 is the prefill, each later step one decode
step. A MoE layer's value is a list with one list of expert ids per token of the step (the top-k, in the
router's order); a dense layer's value is ``null``. No gate weights, no expert count.

Mapping: step 0 is one prefill ubatch, every later step one decode ubatch (of its token count, 1 in all
known files); dense layers are skipped, the MoE layers are the layers with lists (the same in every step
and file). A layer whose value is null in one step and a list in another, steps whose layers disagree on
the token count, ids that are not non-negative integers, a top-k that changes, an expert twice in one
token's list, or invalid JSON are errors naming the file, step and layer.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from hotexperts.errors import InputError
from hotexperts.tracer.readers.perrequest import RequestRouting, read_per_request
from hotexperts.tracer.trace import PHASE_DECODE, PHASE_PREFILL, Trace

__all__ = ["parse_chaos_json", "read_chaos", "looks_like_chaos"]


def looks_like_chaos(head: bytes) -> bool:
    """True when ``head`` (the first bytes of a file) starts like a Chaos request file: ``[{"<int>":``."""
    s = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not s.startswith(b"["):
        return False
    s = s[1:].lstrip()
    if not s.startswith(b"{"):
        return False
    s = s[1:].lstrip()
    if not s.startswith(b'"'):
        return False
    end = s.find(b'"', 1)
    return end > 1 and s[1:end].isdigit()


def _layer_keys(name: str, step: Any, i: int) -> dict[int, str]:
    if not isinstance(step, dict):
        raise InputError(name, f"step {i} is a JSON {type(step).__name__}, expected an object of layers")
    out: dict[int, str] = {}
    for key in step:
        if not (isinstance(key, str) and key.isdigit()):
            raise InputError(name, f"key {key!r} is not a layer number", where=f"step {i}")
        out[int(key)] = key
    return out


def _diagnose(name: str, steps: list[Any], keys: list[str], k: int | None) -> InputError:
    """Find the first malformed step/layer (slow path, only after the fast path failed)."""
    sizes: list[int | None] = [None] * len(steps)
    for key in keys:
        for i, step in enumerate(steps):
            where = f"step {i}, layer {key}"
            v = step[key]
            if not isinstance(v, list):
                return InputError(name, f"expected a list of per-token expert lists, got {json.dumps(v)[:40]}",
                                  where=where)
            if sizes[i] is None:
                sizes[i] = len(v)
            elif sizes[i] != len(v):
                return InputError(name, f"{len(v)} tokens but {sizes[i]} in the step's first MoE layer", where=where)
            for t, tok in enumerate(v):
                if not isinstance(tok, list) or not tok or not all(
                    isinstance(x, int) and not isinstance(x, bool) for x in tok
                ):
                    return InputError(name, f"token {t}: expected a non-empty list of integer expert ids, got "
                                            f"{json.dumps(tok)[:40]}", where=where)
                if k is None:
                    k = len(tok)
                if len(tok) != k:
                    return InputError(name, f"token {t}: {len(tok)} experts but {k} elsewhere (top-k must not change)",
                                      where=where)
                if min(tok) < 0 or max(tok) > 65535:
                    return InputError(name, f"token {t}: expert id {min(tok) if min(tok) < 0 else max(tok)} out of range",
                                      where=where)
                if len(set(tok)) != len(tok):
                    return InputError(name, f"token {t}: the same expert twice in {tok}", where=where)
    return InputError(name, "could not read the routing")


def parse_chaos_json(name: str, data: bytes) -> RequestRouting:
    """Parse one request file (``name`` is used in error messages)."""
    try:
        obj = json.loads(data)
    except UnicodeDecodeError:
        raise InputError(name, "not UTF-8 text (binary or corrupt file)") from None
    except json.JSONDecodeError as exc:
        raise InputError(name, f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}; truncated or "
                               "corrupt file)") from None
    if not isinstance(obj, list) or not obj:
        raise InputError(name, "expected a non-empty JSON list of steps (step 0 = prefill, then decode steps)")
    layer_of = _layer_keys(name, obj[0], 0)
    if not layer_of:
        raise InputError(name, "step 0 has no layers")
    moe = sorted(il for il, key in layer_of.items() if obj[0][key] is not None)
    if not moe:
        raise InputError(name, "every layer is null in step 0: no MoE layer")
    dense = set(layer_of) - set(moe)
    dense_keys = [layer_of[il] for il in sorted(dense)]
    keys = [layer_of[il] for il in moe]
    keys0 = obj[0].keys()
    for i, step in enumerate(obj[1:], start=1):
        # NOTE: fast checks first (a dict-keys comparison, then the dense layers); per-key work only on error
        if not isinstance(step, dict) or step.keys() != keys0:
            _layer_keys(name, step, i)  # a step that is no object, or a key that is no layer number
            diff = sorted(set(step) ^ set(keys0), key=lambda x: (len(x), x))
            raise InputError(name, f"layers {diff[:5]} differ from step 0's", where=f"step {i}")
        for key in dense_keys:
            if step[key] is not None:
                raise InputError(name, f"layer {key} is not null here but null in step 0", where=f"step {i}")
    steps = obj
    sizes = None
    cols = []
    k = None
    try:
        for key in keys:
            vals = [s[key] for s in steps]
            sz = np.fromiter((len(v) for v in vals), np.int64, len(vals))
            if sizes is None:
                sizes = sz
            elif not np.array_equal(sz, sizes):
                raise ValueError
            flat = [tok for v in vals for tok in v]
            a = np.array(flat) if flat else np.zeros((0, k or 1), np.int64)
            if a.ndim != 2 or a.dtype.kind not in "iu" or a.shape[1] == 0:
                raise ValueError
            if k is None:
                k = a.shape[1]
            elif a.shape[1] != k:
                raise ValueError
            if a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
                raise ValueError
            if k > 1 and a.size:
                srt = np.sort(a, axis=1)
                if bool((srt[:, 1:] == srt[:, :-1]).any()):
                    raise ValueError
            cols.append(a.astype(np.uint16))
    except (ValueError, TypeError):
        raise _diagnose(name, steps, keys, None) from None
    assert sizes is not None and k is not None
    experts = np.stack(cols, axis=1) if cols else np.zeros((0, 0, 0), np.uint16)
    if experts.size and int(experts.max()) < 256:
        experts = experts.astype(np.uint8)
    phase = np.full(len(steps), PHASE_DECODE, np.uint8)
    phase[0] = PHASE_PREFILL
    keep = sizes > 0  # NOTE: a step without tokens (an empty prefill) is no step
    return RequestRouting(experts, sizes[keep], phase[keep], tuple(moe))


def read_chaos(path: Any, *, n_expert: int | None = None) -> Trace:
    """Read a Chaos request file, a directory of them, or a tar archive (or a folder inside one)."""
    return read_per_request(path, "chaos-json", parse_chaos_json, n_expert=n_expert)
