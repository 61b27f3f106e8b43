"""Measure prefill and decode tok/s of a running llama.cpp-compatible HTTP server.

``hotexperts measure --server URL`` sends a bounded number of completion requests (``reps`` x
prompts, plus one warm-up) and reports prefill and decode tok/s, median and spread over the
repetitions. Two endpoints are understood:

- llama-server's ``POST /completion`` (``n_predict``; its JSON answer has ``timings``
  {``prompt_n``, ``prompt_ms``, ``predicted_n``, ``predicted_ms``, ...}, measured inside the server;
  see llama.cpp ``tools/server/README.md``);
- OpenAI-style ``POST /v1/completions`` (``max_tokens``; llama-server adds ``timings`` there too,
  other servers, e.g. llama-cpp-python's, only ``usage`` {``prompt_tokens``, ``completion_tokens``}).

Source of the numbers (reported as ``source``):

- ``timings``: the server's own timings, one request per prompt and repetition.
- ``wall``: no timings in the answer: two requests per prompt and repetition. One generates 1
  token: prefill tok/s = ``usage.prompt_tokens / t1`` with ``t1`` its wall time (HTTP and
  tokenization overhead included, small on loopback, and one decode step, so prefill is slightly
  under-estimated for short prompts). One streams ``n_predict`` tokens (``stream: true``): decode
  tok/s = tokens between the first and the last token event / the time between them (the count
  is ``n_predict - 1`` when the server reports ``finish_reason: length``, else the number of
  events, which a server may merge; e.g. llama-cpp-python holds back incomplete UTF-8).

Every request's prompt starts with a unique marker, so a server that reuses a cached prompt prefix
(llama-server's ``cache_prompt``, llama-cpp-python's prefix reuse) must process the whole prompt;
llama-server is also asked for ``cache_prompt: false`` and ``ignore_eos: true``. Greedy decoding
(``temperature 0``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import secrets
import statistics
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hotexperts._atomic import write_text_atomic
from hotexperts.errors import InputError

__all__ = [
    "DEFAULT_PROMPT",
    "compare_with_best",
    "format_measurement",
    "measure_from_args",
    "measure_server",
    "rates_from_timings",
]

DEFAULT_PROMPT = (
    "Explain, step by step and with a worked example, how a mixture-of-experts transformer layer routes "
    "each token to a few of its experts, why only a small share of the weights is read per token, and "
    "what that means for running a large model on one consumer GPU with the experts in system memory."
)

_LLAMA = "/completion"
_OAI = "/v1/completions"


def rates_from_timings(timings: dict[str, Any]) -> dict[str, float]:
    """``prompt_n``, ``prompt_s``, ``predicted_n``, ``predicted_s`` from llama-server ``timings``."""
    try:
        return {
            "prompt_n": float(timings["prompt_n"]),
            "prompt_s": float(timings["prompt_ms"]) / 1000.0,
            "predicted_n": float(timings["predicted_n"]),
            "predicted_s": float(timings["predicted_ms"]) / 1000.0,
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(None, f"server timings lack {exc}: {json.dumps(timings)[:200]}") from None


class _Client:
    def __init__(self, url: str, timeout: float) -> None:
        u = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise InputError(None, f"--server {url!r} is not an http(s) URL")
        self.base = f"{u.scheme}://{u.netloc}"
        path = u.path.rstrip("/")
        self.endpoint: str | None = None
        self.prefix = path
        for ep in (_LLAMA, _OAI):
            if path.endswith(ep):
                self.endpoint = ep
                self.prefix = path[: -len(ep)]
        self.url = url
        self.timeout = timeout
        self.requests = 0

    def post(self, endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any] | None, float]:
        """(HTTP status, JSON answer or None, seconds)."""
        req = urllib.request.Request(
            self.base + self.prefix + endpoint,
            data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        self.requests += 1
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            return exc.code, None, time.perf_counter() - t0
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise InputError(None, f"cannot reach the server at {self.url}: {reason}") from None
        dt = time.perf_counter() - t0
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(None, f"{self.base + self.prefix + endpoint} did not answer JSON: {raw[:120]!r}") from None
        if not isinstance(data, dict):
            raise InputError(None, f"{self.base + self.prefix + endpoint} answered {type(data).__name__}, not an object")
        return status, data, dt


    def post_stream(self, endpoint: str, body: dict[str, Any]) -> list[tuple[float, dict[str, Any]]]:
        """POST with ``stream: true``; the server-sent JSON events with their arrival times (s)."""
        req = urllib.request.Request(
            self.base + self.prefix + endpoint,
            data=json.dumps({**body, "stream": True}).encode("utf-8"),
            headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
            method="POST",
        )
        self.requests += 1
        events: list[tuple[float, dict[str, Any]]] = []
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                for raw in resp:
                    line = raw.decode("utf-8", "replace").strip()
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    try:
                        ev = json.loads(payload)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(ev, dict):
                        events.append((time.perf_counter() - t0, ev))
        except urllib.error.HTTPError as exc:
            raise InputError(None, f"{self.base + self.prefix + endpoint} answered HTTP {exc.code} to a stream") from None
        except (urllib.error.URLError, OSError) as exc:
            raise InputError(None, f"cannot reach the server at {self.url}: {getattr(exc, 'reason', exc)}") from None
        return events


def _text_of(ev: dict[str, Any]) -> str:
    if isinstance(ev.get("content"), str):
        return ev["content"]
    ch = ev.get("choices")
    if isinstance(ch, list) and ch and isinstance(ch[0], dict):
        return str(ch[0].get("text") or "")
    return ""


def _finish_reason(ev: dict[str, Any]) -> str | None:
    ch = ev.get("choices")
    if isinstance(ch, list) and ch and isinstance(ch[0], dict):
        return ch[0].get("finish_reason")
    return "length" if ev.get("stopped_limit") else None


def _body(endpoint: str, prompt: str, n: int) -> dict[str, Any]:
    if endpoint == _LLAMA:
        return {"prompt": prompt, "n_predict": n, "temperature": 0, "cache_prompt": False, "ignore_eos": True}
    # NOTE: min_tokens (llama-cpp-python, vLLM) and ignore_eos (llama-server) keep a random or
    # terse model from stopping early; servers that do not know them ignore them.
    return {"prompt": prompt, "max_tokens": n, "temperature": 0, "min_tokens": n, "ignore_eos": True}


def _usage(data: dict[str, Any], where: str) -> tuple[float, float]:
    u = data.get("usage")
    if isinstance(u, dict) and "prompt_tokens" in u and "completion_tokens" in u:
        return float(u["prompt_tokens"]), float(u["completion_tokens"])
    # llama-server's /completion without timings: tokens_evaluated / tokens_predicted
    if "tokens_evaluated" in data and "tokens_predicted" in data:
        return float(data["tokens_evaluated"]), float(data["tokens_predicted"])
    raise InputError(None, f"{where}: the answer has neither timings nor token usage; cannot measure")


def measure_server(
    url: str,
    *,
    prompts: Sequence[str] = (DEFAULT_PROMPT,),
    n_predict: int = 128,
    reps: int = 3,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """Measure the server at ``url``; see the module doc. Returns the result dict (docs/llamacpp.md)."""
    prompts = [p for p in prompts]
    if not prompts:
        raise InputError(None, "no prompts")
    if n_predict < 2:
        raise InputError(None, f"--n-predict must be >= 2, got {n_predict}")
    if reps < 1:
        raise InputError(None, f"--reps must be >= 1, got {reps}")
    if not timeout > 0:
        raise InputError(None, f"--timeout must be positive, got {timeout}")
    cl = _Client(url, timeout)
    tag = secrets.token_hex(3)

    # warm-up, and endpoint discovery when the URL does not name one
    warm = f"[warm-up {tag}] " + prompts[0]
    endpoints = [cl.endpoint] if cl.endpoint else [_LLAMA, _OAI]
    first: dict[str, Any] | None = None
    for ep in endpoints:
        status, data, _ = cl.post(ep, _body(ep, warm, 2))
        if status == 200 and data is not None:
            cl.endpoint, first = ep, data
            break
        if status not in (404, 405):
            raise InputError(None, f"{cl.base + cl.prefix + ep} answered HTTP {status}")
    if first is None or cl.endpoint is None:
        raise InputError(None, f"{url}: neither {_LLAMA} nor {_OAI} answered (HTTP 404)")
    endpoint = cl.endpoint
    source = "timings" if isinstance(first.get("timings"), dict) else "wall"

    def call(prompt: str, n: int) -> tuple[dict[str, Any], float]:
        status, data, dt = cl.post(endpoint, _body(endpoint, prompt, n))
        if status != 200 or data is None:
            raise InputError(None, f"{cl.base + cl.prefix + endpoint} answered HTTP {status}")
        return data, dt

    per_request: list[dict[str, Any]] = []
    pre_rates: list[float] = []
    dec_rates: list[float] = []
    for rep in range(reps):
        tot = {"prompt_n": 0.0, "prompt_s": 0.0, "predicted_n": 0.0, "predicted_s": 0.0}
        for i, pr in enumerate(prompts):
            marker = f"[{tag} run {rep + 1}.{i + 1}] "
            if source == "timings":
                data, dt = call(marker + pr, n_predict)
                if not isinstance(data.get("timings"), dict):
                    raise InputError(None, "the server stopped returning timings")
                row = rates_from_timings(data["timings"])
                row["wall_s"] = dt
            else:
                d1, t1 = call(marker + pr, 1)
                p1, _ = _usage(d1, endpoint)
                # NOTE: a different marker of the same length, so the prefix cache cannot help;
                # decode is timed inside one streamed answer (first to last token event), which
                # leaves out the request's own overhead and the prefill.
                events = cl.post_stream(endpoint, _body(endpoint, marker.replace(f"{tag} ", f"{tag[::-1]} ") + pr, n_predict))
                toks = [(t, ev) for t, ev in events if _text_of(ev)]
                if len(toks) < 2:
                    raise InputError(None, f"{endpoint}: the streamed answer has {len(toks)} token event(s); cannot time decode")
                last = events[-1][1]
                # forced length (min_tokens/ignore_eos) -> n_predict tokens; else count the events
                n_between = n_predict - 1 if _finish_reason(last) == "length" else len(toks) - 1
                span = toks[-1][0] - toks[0][0]
                if span <= 0:
                    raise InputError(None, f"{endpoint}: the streamed tokens arrived all at once; cannot time decode")
                row = {"prompt_n": p1, "prompt_s": t1, "predicted_n": float(n_between), "predicted_s": span,
                       "wall_s": t1 + events[-1][0]}
            row.update(rep=rep, prompt=i)
            per_request.append(row)
            for k in tot:
                tot[k] += row[k]
        if tot["prompt_s"] > 0 and tot["prompt_n"] > 0:
            pre_rates.append(tot["prompt_n"] / tot["prompt_s"])
        if tot["predicted_s"] > 0 and tot["predicted_n"] > 0:
            dec_rates.append(tot["predicted_n"] / tot["predicted_s"])

    def summary(v: list[float]) -> dict[str, Any] | None:
        if not v:
            return None
        return {"median": statistics.median(v), "min": min(v), "max": max(v), "all": v}

    return {
        "server": url,
        "endpoint": endpoint,
        "source": source,
        "prompts": len(prompts),
        "n_predict": int(n_predict),
        "reps": int(reps),
        "requests": cl.requests,
        "prefill_tok_s": summary(pre_rates),
        "decode_tok_s": summary(dec_rates),
        "per_request": per_request,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _pct(pred: float | None, meas: float | None) -> float | None:
    if pred is None or meas is None or not meas or not math.isfinite(pred):
        return None
    return (pred - meas) / meas * 100.0


def compare_with_best(result: dict[str, Any], best_path: str | Path) -> dict[str, Any]:
    """Measured vs predicted tok/s of a ``tune`` output's ``best.json`` (its best and baselines).

    ``error_pct = (predicted - measured) / measured x 100`` as in the runtime's validation.json.
    """
    p = Path(best_path)
    if p.is_dir():
        p = p / "best.json"
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(p, "no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(p, f"not a readable JSON file ({exc})") from None
    if not isinstance(d, dict) or not isinstance(d.get("best"), dict) or "decode_tok_s" not in d["best"]:
        raise InputError(p, "not a tune best.json (no best.decode_tok_s)")
    meas_dec = (result.get("decode_tok_s") or {}).get("median")
    meas_pre = (result.get("prefill_tok_s") or {}).get("median")
    rows = []
    cands = [("best", d["best"])] + [
        (f"baseline {k}", v) for k, v in (d.get("baselines") or {}).items() if isinstance(v, dict)
    ]
    for name, c in cands:
        pd, pp = c.get("decode_tok_s"), c.get("prefill_tok_s")
        rows.append({
            "name": name,
            "label": c.get("label"),
            "predicted_decode_tok_s": pd,
            "measured_decode_tok_s": meas_dec,
            "decode_error_pct": _pct(pd, meas_dec),
            "predicted_prefill_tok_s": pp,
            "measured_prefill_tok_s": meas_pre,
            "prefill_error_pct": _pct(pp, meas_pre),
        })
    return {"best_json": str(p), "model": d.get("model"), "hardware": d.get("hardware"), "rows": rows}


def format_measurement(r: dict[str, Any]) -> str:
    """A readable summary (and the comparison table when present)."""

    def f(s: dict[str, Any] | None) -> str:
        return "-" if s is None else f"{s['median']:.2f} tok/s (min {s['min']:.2f}, max {s['max']:.2f})"

    lines = [
        f"server   {r['server']} ({r['endpoint']}, numbers from {r['source']})",
        f"prefill  {f(r['prefill_tok_s'])}",
        f"decode   {f(r['decode_tok_s'])}",
        f"         {r['reps']} reps x {r['prompts']} prompt(s), {r['n_predict']} tokens each, {r['requests']} requests",
    ]
    cmp_ = r.get("compare")
    if cmp_:

        def n(x: float | None, d: int = 2) -> str:
            return "-" if x is None else f"{x:.{d}f}"

        lines.append(f"compared with {cmp_['best_json']} (model {cmp_['model']}, hardware {cmp_['hardware']}):")
        lines.append(f"  {'':<24} {'decode pred':>11} {'measured':>9} {'err %':>7}   {'prefill pred':>12} {'measured':>9} {'err %':>7}")
        for row in cmp_["rows"]:
            lines.append(
                f"  {row['name']:<24} {n(row['predicted_decode_tok_s']):>11} {n(row['measured_decode_tok_s']):>9} "
                f"{n(row['decode_error_pct'], 1):>7}   {n(row['predicted_prefill_tok_s'], 1):>12} "
                f"{n(row['measured_prefill_tok_s'], 1):>9} {n(row['prefill_error_pct'], 1):>7}"
            )
    return "\n".join(lines)


def measure_from_args(args: Any) -> dict[str, Any]:
    """``hotexperts measure``: run, compare, write ``--out``; returns the result dict."""
    if args.prompts:
        from hotexperts.tracer.capture import read_prompt_file

        prompts = read_prompt_file(args.prompts)
    else:
        prompts = [DEFAULT_PROMPT]
    if args.out and Path(args.out).is_dir():
        raise InputError(args.out, "is a directory; --out needs a file name")
    if args.compare and not Path(args.compare).exists():
        raise InputError(args.compare, "no such file")
    r = measure_server(args.server, prompts=prompts, n_predict=args.n_predict, reps=args.reps, timeout=args.timeout)
    if args.compare:
        r["compare"] = compare_with_best(r, args.compare)
    if args.out:
        write_text_atomic(args.out, json.dumps(r, indent=2) + "\n")
    return r
