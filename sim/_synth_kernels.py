"""Numba kernels of the synthetic routing generator (:mod:`hotexperts.tracer.synth`).

The generator is sequential in time (a token copies experts from earlier tokens), so it cannot be
vectorised over tokens in numpy; a Python loop over 100K tokens x 48 layers is far too slow. The
layers are independent once the shared per-token latent is drawn (in numpy, by the caller), so the
kernel runs one layer per thread (``prange``).

Randomness comes from a counter-free splitmix64 stream per layer, seeded from ``(seed, layer)``:
the result is the same for a seed whatever the number of threads. (splitmix64: Steele, Lea &
Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014.)

Also here: :func:`layer_stats`, the summary statistics the fitter matches (reuse-distance
histogram, popularity shares, drift), computed the same way on real and synthetic traces.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["sample_routing", "layer_stats", "all_layer_stats", "N_DEC_BINS", "N_STATS"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0

# decode reuse-distance bins (upper edges, inclusive); the last bin is "farther or never"
_DEC_EDGES = np.array([1, 2, 4, 8, 16, 32, 64], np.int64)
N_DEC_BINS = 8
# stats vector: 8 decode bins, prefill bins (d=1, 2..8, farther), top-8 / top-32 shares of decode
# counts, drift overlap of decode hot sets (top-32 of the first vs the second half), then the tail and
# hot-core statistics: decode picks of experts never used before in the request, top-128 share of
# decode counts, persistence of the top-8 across consecutive decode windows
N_STATS = N_DEC_BINS + 3 + 3 + 3
PERSIST_WINDOW = 32  # decode tokens per window of the top-8 persistence statistic


@njit(inline="always", cache=True)
def _mix(z):
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(inline="always", cache=True)
def _uniform(st):
    # st: 1-element uint64 state array
    st[0] = st[0] + _GOLDEN
    return float(_mix(st[0]) >> _S11) * _INV53


@njit(inline="always", cache=True)
def _normal(st):
    u1 = _uniform(st)
    u2 = _uniform(st)
    if u1 < 1e-300:
        u1 = 1e-300
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


@njit(cache=True)
def _search(cdf, n, u):
    # first index i in [0, n) with cdf[i] > u (cdf non-decreasing, cdf[n-1] == total)
    lo = 0
    hi = n - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        if cdf[mid] > u:
            hi = mid
        else:
            lo = mid + 1
    return lo


@njit(cache=True)
def _rebuild_cdf(g, cdf):
    n = g.size
    m = g.max()
    acc = 0.0
    for e in range(n):
        acc += np.exp(g[e] - m)
        cdf[e] = acc
    return acc


@njit(parallel=True, cache=True)
def sample_routing(
    out,
    phase,
    new_request,
    z,
    logit_next_dec,
    logit_next_pre,
    copy_far,
    dist_cdf,
    zipf_exponent,
    tail_exponent,
    tail_knee,
    request_share,
    sigma_drift,
    rho_drift,
    drift_every,
    sigma_z,
    n_expert,
    seed,
):
    """Fill ``out[t, l, :]`` (unsigned int array ``(T, L, k)``) with distinct expert ids.

    Per layer ``l`` and token ``t`` (see docs/synthetic-traces.md for the equations):
      * log-popularity ``g[e] = -zipf_exponent * log(rank[e])
        - tail_exponent * max(0, log(rank[e] / tail_knee)) + x[e]`` (a Zipf head and a steeper tail
        beyond rank ``tail_knee``): ``rank`` orders the experts by
        ``sqrt(1-request_share)*a + sqrt(request_share)*b`` (``a`` drawn once, ``b`` redrawn at each
        request start), ``x`` an AR(1) (Ornstein-Uhlenbeck) drift updated every ``drift_every``
        tokens with coefficient ``rho_drift`` and stationary std ``sigma_drift``;
      * next-token copy probability ``c1 = sigmoid(logit_next[phase] + sigma_z * z[t])`` with ``z``
        shared by all layers (inter-layer correlation); far-copy probability ``copy_far``;
      * each of the k picks: with probability ``c1`` copy a random pick of token ``t - 1``, with
        probability ``copy_far`` one of token ``t - d``, ``d >= 2`` drawn from ``dist_cdf[l]``
        (``dist_cdf[l, i]`` = P(d <= i + 2)), same request only; otherwise (or if that fails) draw
        from ``softmax(g)``; picks already made for this token are redrawn (top-k without
        replacement).
    """
    n_tok, n_layers, k = out.shape
    dmax = dist_cdf.shape[1]
    for layer in prange(n_layers):
        st = np.empty(1, np.uint64)
        st[0] = _mix(np.uint64(seed) * np.uint64(1000003) + np.uint64(layer) + _GOLDEN)
        ne = n_expert
        a = np.empty(ne)
        v = np.empty(ne)
        base = np.empty(ne)
        x = np.empty(ne)
        g = np.empty(ne)
        cdf = np.empty(ne)
        for e in range(ne):
            a[e] = _normal(st)
            x[e] = sigma_drift[layer] * _normal(st)
        rho = rho_drift[layer]
        innov = sigma_drift[layer] * np.sqrt(max(0.0, 1.0 - rho * rho))
        sa = np.sqrt(max(0.0, 1.0 - request_share))
        sb = np.sqrt(max(0.0, request_share))
        zs = zipf_exponent[layer]
        zt = tail_exponent[layer]
        lk = np.log(tail_knee[layer])
        total = 0.0
        req_start = 0
        for t in range(n_tok):
            if t == 0 or new_request[t]:
                req_start = t
                # the Zipf profile is fixed; which expert holds which rank is re-ranked per request
                for e in range(ne):
                    v[e] = sa * a[e] + sb * _normal(st)
                order = np.argsort(-v)
                for r in range(ne):
                    lr = np.log(r + 1.0)
                    base[order[r]] = -zs * lr - zt * max(0.0, lr - lk)
                for e in range(ne):
                    g[e] = base[e] + x[e]
                total = _rebuild_cdf(g, cdf)
            elif (t - req_start) % drift_every == 0:
                # NOTE: Box-Muller pairs (both normals used) - this update is most of the kernel's time
                for e in range(0, ne, 2):
                    u1 = max(_uniform(st), 1e-300)
                    r = np.sqrt(-2.0 * np.log(u1))
                    th = 2.0 * np.pi * _uniform(st)
                    x[e] = rho * x[e] + innov * r * np.cos(th)
                    g[e] = base[e] + x[e]
                    if e + 1 < ne:
                        x[e + 1] = rho * x[e + 1] + innov * r * np.sin(th)
                        g[e + 1] = base[e + 1] + x[e + 1]
                total = _rebuild_cdf(g, cdf)
            if phase[t] == 1:
                lc = logit_next_dec[layer]
            else:
                lc = logit_next_pre[layer]
            c1 = 1.0 / (1.0 + np.exp(-(lc + sigma_z * z[t])))
            c2 = min(1.0, c1 + copy_far[layer])
            avail = t - req_start
            for j in range(k):
                e_new = -1
                u = _uniform(st)
                if avail > 0 and u < c2:
                    for _try in range(4):
                        if u < c1:
                            d = 1
                        else:
                            d = _search(dist_cdf[layer], dmax, _uniform(st)) + 2
                        if d > avail:
                            continue
                        cand = out[t - d, layer, int(_uniform(st) * k)]
                        dup = False
                        for i in range(j):
                            if out[t, layer, i] == cand:
                                dup = True
                                break
                        if not dup:
                            e_new = cand
                            break
                if e_new < 0:
                    for _try in range(64):
                        cand = _search(cdf, ne, _uniform(st) * total)
                        dup = False
                        for i in range(j):
                            if out[t, layer, i] == cand:
                                dup = True
                                break
                        if not dup:
                            e_new = cand
                            break
                if e_new < 0:
                    # NOTE: only reachable with extreme skew; take the first free id.
                    for cand in range(ne):
                        dup = False
                        for i in range(j):
                            if out[t, layer, i] == cand:
                                dup = True
                                break
                        if not dup:
                            e_new = cand
                            break
                out[t, layer, j] = e_new


@njit(cache=True)
def layer_stats(ids, present, phase, new_request, n_expert, out):
    """Summary statistics of one layer: ``ids (T, k)``, ``present (T,)`` bool; writes ``out[N_STATS]``.

    out[0:8]   decode selections by distance to the previous use of the same expert in the same
               request (1, 2, 3-4, 5-8, 9-16, 17-32, 33-64, farther or never), as fractions;
    out[8:11]  the same for prefill selections, bins 1, 2-8, farther or never;
    out[11]    share of decode selections taken by the 8 most-selected experts;
    out[12]    the same for the 32 most-selected;
    out[13]    |top-32 of the first half of decode tokens & top-32 of the second half| / 32;
    out[14]    share of decode selections of an expert not used before in the request (prompt included);
    out[15]    share of decode selections taken by the 128 most-selected experts;
    out[16]    top-8 persistence: share of the selections of decode window ``w + 1`` (windows of
               ``PERSIST_WINDOW`` decode tokens) that fall on the 8 most-selected experts of window
               ``w``, pooled over window pairs (0 with fewer than two windows).
    """
    n_tok, k = ids.shape
    last = np.full(n_expert, -1, np.int64)
    cnt = np.zeros(n_expert, np.int64)
    c1 = np.zeros(n_expert, np.int64)
    c2 = np.zeros(n_expert, np.int64)
    for i in range(out.size):
        out[i] = 0.0
    n_dec_tok = 0
    for t in range(n_tok):
        if present[t] and phase[t] == 1:
            n_dec_tok += 1
    half = n_dec_tok // 2
    seen_dec = 0
    n_dec = 0.0
    n_pre = 0.0
    n_new = 0.0
    wc = np.zeros(n_expert, np.int64)  # counts of the current persistence window
    hot = np.zeros(n_expert, np.bool_)  # top-8 of the previous window
    have_hot = False
    p_hit = 0.0
    p_n = 0.0
    for t in range(n_tok):
        if new_request[t]:
            for e in range(n_expert):
                last[e] = -1
        if not present[t]:
            continue
        for j in range(k):
            e = ids[t, j]
            d = t - last[e] if last[e] >= 0 else 1 << 40
            if phase[t] == 1:
                bi = N_DEC_BINS - 1
                for q in range(_DEC_EDGES.size):
                    if d <= _DEC_EDGES[q]:
                        bi = q
                        break
                out[bi] += 1.0
                n_dec += 1.0
                if last[e] < 0:
                    n_new += 1.0
                cnt[e] += 1
                wc[e] += 1
                if have_hot:
                    p_n += 1.0
                    if hot[e]:
                        p_hit += 1.0
                if seen_dec < half:
                    c1[e] += 1
                else:
                    c2[e] += 1
            else:
                if d == 1:
                    out[N_DEC_BINS] += 1.0
                elif d <= 8:
                    out[N_DEC_BINS + 1] += 1.0
                else:
                    out[N_DEC_BINS + 2] += 1.0
                n_pre += 1.0
        for j in range(k):
            last[ids[t, j]] = t
        if phase[t] == 1:
            seen_dec += 1
            if seen_dec % PERSIST_WINDOW == 0:
                top = np.argsort(-wc, kind="mergesort")[:8]
                for e in range(n_expert):
                    hot[e] = False
                for e in top:
                    hot[e] = True
                have_hot = True
                for e in range(n_expert):
                    wc[e] = 0
    if n_dec > 0:
        for i in range(N_DEC_BINS):
            out[i] /= n_dec
        srt = np.sort(cnt)[::-1]
        out[11] = srt[:8].sum() / n_dec
        out[12] = srt[:32].sum() / n_dec
        out[14] = n_new / n_dec
        out[15] = srt[:128].sum() / n_dec
        if p_n > 0:
            out[16] = p_hit / p_n
        if half > 0:
            o1 = np.argsort(-c1, kind="mergesort")[:32]
            o2 = np.argsort(-c2, kind="mergesort")[:32]
            m = np.zeros(n_expert, np.bool_)
            for e in o1:
                m[e] = True
            ov = 0
            for e in o2:
                if m[e]:
                    ov += 1
            out[13] = ov / 32.0
    if n_pre > 0:
        for i in range(3):
            out[N_DEC_BINS + i] /= n_pre


@njit(parallel=True, cache=True)
def all_layer_stats(ids, present, phase, new_request, n_expert, out):
    """:func:`layer_stats` of every layer: ``ids (T, L, k)``, ``present (T, L)``, ``out (L, N_STATS)``."""
    for layer in prange(ids.shape[1]):
        layer_stats(ids[:, layer, :], present[:, layer], phase, new_request, n_expert, out[layer])
