"""A ``llama-server`` invocation as llama.cpp reads it: command-line flags, ``LLAMA_ARG_*`` environment,
run scripts and env files.

What is modelled (llama.cpp ``common/arg.cpp``, ``common_params_parse_ex`` and the option table):

- every option may have an environment variable; an option given on the command line wins over its
  variable (the variable is read only when the flag is absent);
- ``-ot/--override-tensor PATTERN=BUFT[,PATTERN=BUFT...]`` appends overrides in order, and each tensor
  takes the buffer type of the FIRST pattern that matches its name anywhere (``std::regex_search``);
  ``--cpu-moe`` appends ``\\.ffn_(up|down|gate)_(ch|)exps``=CPU and ``--n-cpu-moe N`` appends the same
  pattern for each of the first ``N`` layers (``blk\\.<i>\\.ffn_...``), after the ``-ot`` overrides;
- the flags and variables of the hot-expert forks are declared by their targets (``hotexperts.studies.
  targets``), so that one parser knows every flag it can price; an unknown flag is an error naming it,
  and so is a known flag whose effect the cost model cannot price (``--tensor-split``, a draft model,
  partial ``-ngl``...).

:func:`read_script` reads the ``llama-server.sh`` files ``hotexperts tune`` writes (and simple ones
written by hand): ``#`` comments, ``cd "$(dirname "$0")"``, ``set -a``/``set +a``, ``. FILE`` /
``source FILE``, ``export VAR=value`` / ``VAR=value`` lines and one ``[exec] [VAR=value ...]
llama-server ARGS`` line (backslash continuations allowed). Anything else is an error naming the line.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotexperts.errors import InputError

__all__ = [
    "Flag",
    "Invocation",
    "GENERIC_FLAGS",
    "parse_invocation",
    "read_env_file",
    "read_script",
    "expert_placement",
]


@dataclass(frozen=True)
class Flag:
    """One llama-server option: its spellings, its variable, whether it takes a value, how it is priced.

    ``priced``: ``"yes"`` (read into the configuration), ``"ignored"`` (no effect on speed or VRAM that
    the cost model knows of: ports, sampling, logging...), or a reason string (an error naming the flag).
    """

    key: str
    names: tuple[str, ...]
    env: str | None = None
    takes_value: bool = True
    priced: str = "yes"
    repeat: bool = False  # appends (``-ot``) instead of replacing


def _f(key: str, *names: str, env: str | None = None, value: bool = True, priced: str = "yes",
       repeat: bool = False) -> Flag:
    return Flag(key, tuple(names), env, value, priced, repeat)


_IGN = "ignored"
#: llama-server options every target shares (names and variables as in llama.cpp's ``common/arg.cpp``)
GENERIC_FLAGS: tuple[Flag, ...] = (
    _f("model", "-m", "--model", env="LLAMA_ARG_MODEL"),
    _f("ctx_size", "-c", "--ctx-size", env="LLAMA_ARG_CTX_SIZE"),
    _f("n_gpu_layers", "-ngl", "--gpu-layers", "--n-gpu-layers", env="LLAMA_ARG_N_GPU_LAYERS"),
    _f("ubatch", "-ub", "--ubatch-size", env="LLAMA_ARG_UBATCH"),
    _f("batch", "-b", "--batch-size", env="LLAMA_ARG_BATCH"),
    _f("flash_attn", "-fa", "--flash-attn", env="LLAMA_ARG_FLASH_ATTN"),
    _f("cache_type_k", "-ctk", "--cache-type-k", env="LLAMA_ARG_CACHE_TYPE_K"),
    _f("cache_type_v", "-ctv", "--cache-type-v", env="LLAMA_ARG_CACHE_TYPE_V"),
    _f("override_tensor", "-ot", "--override-tensor", env="LLAMA_ARG_OVERRIDE_TENSOR", repeat=True),
    _f("cpu_moe", "-cmoe", "--cpu-moe", env="LLAMA_ARG_CPU_MOE", value=False, repeat=True),
    _f("n_cpu_moe", "-ncmoe", "--n-cpu-moe", env="LLAMA_ARG_N_CPU_MOE", repeat=True),
    # no effect the cost model knows of
    _f("threads", "-t", "--threads", env="LLAMA_ARG_THREADS", priced=_IGN),
    _f("threads_batch", "-tb", "--threads-batch", env="LLAMA_ARG_THREADS_BATCH", priced=_IGN),
    _f("host", "--host", env="LLAMA_ARG_HOST", priced=_IGN),
    _f("port", "--port", env="LLAMA_ARG_PORT", priced=_IGN),
    _f("alias", "-a", "--alias", env="LLAMA_ARG_ALIAS", priced=_IGN),
    _f("api_key", "--api-key", env="LLAMA_API_KEY", priced=_IGN),
    _f("parallel", "-np", "--parallel", env="LLAMA_ARG_N_PARALLEL", priced=_IGN),
    _f("n_predict", "-n", "--n-predict", env="LLAMA_ARG_N_PREDICT", priced=_IGN),
    _f("jinja", "--jinja", env="LLAMA_ARG_JINJA", value=False, priced=_IGN),
    _f("chat_template", "--chat-template", env="LLAMA_ARG_CHAT_TEMPLATE", priced=_IGN),
    _f("chat_template_file", "--chat-template-file", env="LLAMA_ARG_CHAT_TEMPLATE_FILE", priced=_IGN),
    _f("reasoning_format", "--reasoning-format", env="LLAMA_ARG_THINK", priced=_IGN),
    _f("temp", "--temp", priced=_IGN),
    _f("top_k", "--top-k", priced=_IGN),
    _f("top_p", "--top-p", priced=_IGN),
    _f("min_p", "--min-p", priced=_IGN),
    _f("repeat_penalty", "--repeat-penalty", priced=_IGN),
    _f("seed", "-s", "--seed", priced=_IGN),
    _f("mlock", "--mlock", env="LLAMA_ARG_MLOCK", value=False, priced=_IGN),
    _f("no_mmap", "--no-mmap", env="LLAMA_ARG_NO_MMAP", value=False, priced=_IGN),
    _f("no_warmup", "--no-warmup", value=False, priced=_IGN),
    _f("metrics", "--metrics", env="LLAMA_ARG_ENDPOINT_METRICS", value=False, priced=_IGN),
    _f("no_webui", "--no-webui", env="LLAMA_ARG_NO_WEBUI", value=False, priced=_IGN),
    _f("cont_batching", "-cb", "--cont-batching", env="LLAMA_ARG_CONT_BATCHING", value=False, priced=_IGN),
    _f("verbose", "-v", "--verbose", value=False, priced=_IGN),
    _f("log_file", "--log-file", priced=_IGN),
    _f("timeout", "-to", "--timeout", env="LLAMA_ARG_TIMEOUT", priced=_IGN),
    _f("main_gpu", "-mg", "--main-gpu", env="LLAMA_ARG_MAIN_GPU", priced=_IGN),
    # known, but the cost model has no term for them
    _f("tensor_split", "-ts", "--tensor-split", env="LLAMA_ARG_TENSOR_SPLIT",
       priced="splitting the model over several GPUs is not priced (one GPU only)"),
    _f("split_mode", "-sm", "--split-mode", env="LLAMA_ARG_SPLIT_MODE",
       priced="split modes over several GPUs are not priced (one GPU only)"),
    _f("device", "-dev", "--device", env="LLAMA_ARG_DEVICE", priced="device selection is not priced (one GPU only)"),
    _f("model_draft", "-md", "--model-draft", env="LLAMA_ARG_MODEL_DRAFT",
       priced="speculative decoding with a draft model is not priced"),
    _f("lora", "--lora", priced="LoRA adapters are not priced (the hot-expert forks disable their cache with LoRA)"),
    _f("override_kv", "--override-kv", priced="metadata overrides are not priced"),
    _f("fit", "-fit", "--fit", env="LLAMA_ARG_FIT",
       priced="--fit lets llama.cpp move tensors at load time; the placement it picks is not known here"),
)

_EXPERT_TENSORS = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")
_ALL_CPU_PATTERN = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"


@dataclass
class Invocation:
    """A parsed llama-server invocation: flag values by key (CLI over env), where each came from."""

    values: dict[str, Any] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)  # key -> "--flag" or "ENV_VAR"
    # tensor placement rules in the order llama.cpp appends them: ("ot", pattern, buffer type),
    # ("cpu_moe",) or ("n_cpu_moe", N)
    rules: list[tuple[Any, ...]] = field(default_factory=list)
    program: str = "llama-server"
    origin: str = "<command>"

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def has(self, key: str) -> bool:
        return key in self.values

    def where(self, key: str) -> str:
        return self.source.get(key, key)

    def int_of(self, key: str, default: int | None = None, *, minimum: int | None = None) -> int | None:
        """The value of ``key`` as an integer (InputError naming the flag otherwise)."""
        if key not in self.values:
            return default
        raw = self.values[key]
        try:
            v = int(str(raw).strip())
        except ValueError:
            raise InputError(self.origin, f"{self.where(key)} expects an integer, got {raw!r}") from None
        if minimum is not None and v < minimum:
            raise InputError(self.origin, f"{self.where(key)} must be >= {minimum}, got {v}")
        return v

    def float_of(self, key: str, default: float | None = None) -> float | None:
        if key not in self.values:
            return default
        raw = self.values[key]
        try:
            return float(str(raw).strip())
        except ValueError:
            raise InputError(self.origin, f"{self.where(key)} expects a number, got {raw!r}") from None


def _index(flags: Iterable[Flag]) -> tuple[dict[str, Flag], dict[str, Flag]]:
    by_name: dict[str, Flag] = {}
    by_env: dict[str, Flag] = {}
    for fl in flags:
        for n in fl.names:
            by_name[n] = fl
        if fl.env:
            by_env[fl.env] = fl
    return by_name, by_env


_TRUE = ("1", "true", "on", "yes", "enabled")


def _is_llama_program(word: str) -> bool:
    base = os.path.basename(word)
    return base.startswith("llama-server") or base.startswith("llama-cli") or base in ("server", "main")


def parse_invocation(argv: Sequence[str], env: Mapping[str, str], flags: Iterable[Flag], *,
                     env_only: Iterable[str] = (), origin: str = "<command>") -> Invocation:
    """Read ``argv`` (with or without the program name) and ``env`` the way llama.cpp does.

    ``flags``: every option known (generic and the targets'); ``env_only``: variables some target reads
    directly with ``getenv`` (no option), kept as they are. Raises InputError naming an unknown flag, a
    flag without its value, or a flag the cost model cannot price.
    """
    by_name, by_env = _index(flags)
    inv = Invocation(origin=origin)
    args = list(argv)
    if args and not args[0].startswith("-"):
        if not _is_llama_program(args[0]):
            raise InputError(origin, f"expected a llama-server command line, got program {args[0]!r}")
        inv.program = os.path.basename(args.pop(0))
    cli: dict[str, Any] = {}
    cli_rules: list[tuple[Any, ...]] = []
    i = 0
    while i < len(args):
        a = args[i]
        name, _, inline = a.partition("=") if a.startswith("--") else (a, "", "")
        fl = by_name.get(name)
        if fl is None:
            if not a.startswith("-"):
                raise InputError(origin, f"unexpected argument {a!r} (llama-server takes options only)")
            raise InputError(origin, f"unknown flag {name}: hotexperts cannot price it")
        if fl.takes_value:
            if inline:
                val: Any = inline
            else:
                if i + 1 >= len(args):
                    raise InputError(origin, f"flag {name} needs a value")
                i += 1
                val = args[i]
        else:
            val = True
        if fl.priced not in ("yes", _IGN):
            raise InputError(origin, f"flag {name}: {fl.priced}")
        cli_rules += _rules(fl.key, val, origin, name)
        cli[fl.key] = val
        inv.source[fl.key] = name
        i += 1
    # NOTE: llama.cpp runs every option's handler for its variable first (in option order), then the
    # command line's: a scalar given on the command line wins, and appending options (-ot, --cpu-moe,
    # --n-cpu-moe) take both, the environment's first.
    env_rules: list[tuple[Any, ...]] = []
    for var, fl in by_env.items():
        if var not in env:
            continue
        if fl.priced not in ("yes", _IGN):
            raise InputError(origin, f"variable {var}: {fl.priced}")
        raw = env[var]
        val = raw if fl.takes_value else raw.strip().lower() in _TRUE
        if fl.repeat:
            env_rules += _rules(fl.key, val, origin, var)
        if fl.key in cli or val is False:
            continue
        inv.values[fl.key] = val
        inv.source[fl.key] = var
    for var in env_only:
        if var in env:
            inv.values[var] = env[var]
            inv.source[var] = var
    for var in env:
        if var.startswith("LLAMA_") and var not in by_env and var not in inv.values:
            raise InputError(origin, f"unknown variable {var}: hotexperts cannot price it")
    inv.values.update(cli)
    inv.rules = env_rules + cli_rules
    return inv


def _rules(key: str, val: Any, origin: str, name: str) -> list[tuple[Any, ...]]:
    if key == "override_tensor":
        return [("ot", p, b) for p, b in _split_overrides(str(val), origin, name)]
    if key == "cpu_moe":
        return [("cpu_moe",)] if val is True else []
    if key == "n_cpu_moe":
        try:
            n = int(str(val).strip())
        except ValueError:
            raise InputError(origin, f"{name} expects an integer, got {val!r}") from None
        if n < 0:
            raise InputError(origin, f"{name} must be >= 0, got {n}")
        return [("n_cpu_moe", n)]
    return []


def _split_overrides(val: str, origin: str, name: str) -> list[tuple[str, str]]:
    from hotexperts._overrides import split_tensor_overrides

    try:
        return split_tensor_overrides(val)
    except ValueError as exc:
        raise InputError(origin, f"{name}: expected PATTERN=BUFFER_TYPE items: {exc}") from None


def _host_buft(buft: str, origin: str) -> bool:
    b = buft.strip()
    if b.upper() == "CPU" or b.endswith("_Host"):
        return True
    if re.fullmatch(r"(CUDA|ROCm|Vulkan|SYCL|Metal)\d*", b):
        return False
    raise InputError(origin, f"unknown buffer type {b!r} in a tensor override")


def expert_placement(inv: Invocation, n_layer: int, moe_layers: Sequence[int]) -> list[bool]:
    """Per MoE layer, whether its routed experts live in host memory, as llama.cpp places them.

    The overrides are ``-ot`` patterns (first match wins, ``regex_search`` on the tensor name), then
    ``--cpu-moe``, then ``--n-cpu-moe N`` (the first N layers). A layer whose gate/up/down expert tensors
    land on different sides is an error (not priced).
    """
    rules: list[tuple[str, str]] = []
    for r in inv.rules:
        if r[0] == "ot":
            rules.append((r[1], r[2]))
        elif r[0] == "cpu_moe":
            rules.append((_ALL_CPU_PATTERN, "CPU"))
        else:
            rules += [(rf"blk\.{il}{_ALL_CPU_PATTERN}", "CPU") for il in range(min(int(r[1]), n_layer))]
    compiled = [(re.compile(p), _host_buft(b, inv.origin)) for p, b in rules]
    out = []
    for il in moe_layers:
        sides = set()
        for t in _EXPERT_TENSORS:
            name = f"blk.{il}.{t}.weight"
            side = False
            for rx, host in compiled:
                if rx.search(name):
                    side = host
                    break
            sides.add(side)
        if len(sides) > 1:
            raise InputError(inv.origin, f"the tensor overrides split layer {il}'s expert tensors between CPU and GPU "
                                         "(not priced)")
        out.append(sides.pop())
    return out


# ------------------------------------------------------------------------------------ files
def _unquote(v: str) -> str:
    v = v.strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
        return v[1:-1]
    return v


_ASSIGN = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """``KEY=VALUE`` lines (``export`` allowed, ``#`` comments, quotes stripped); InputError otherwise."""
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(p, f"cannot read env file: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    env: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = _ASSIGN.match(s)
        if not m:
            raise InputError(p, f"line {n}: expected KEY=VALUE, got {s[:60]!r}")
        try:
            words = shlex.split(m.group(2), comments=True)
        except ValueError as exc:
            raise InputError(p, f"line {n}: {exc}") from None
        env[m.group(1)] = words[0] if words else ""
    return env


def _logical_lines(text: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    buf, start = "", 0
    for n, line in enumerate(text.splitlines(), 1):
        if not buf:
            start = n
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        out.append((start, buf))
        buf = ""
    if buf:
        out.append((start, buf))
    return out


def read_script(path: str | os.PathLike[str]) -> tuple[list[str], dict[str, str], Path]:
    """The llama-server argv and environment a run script sets up, and the folder it runs in.

    Returns ``(argv, env, cwd)``: ``env`` holds the variables the script assigns (``set -a`` exports
    what sourced files assign); ``cwd`` is the script's folder after ``cd "$(dirname "$0")"``, else the
    current folder. Relative paths in the command are relative to ``cwd``.
    """
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(p, f"cannot read run script: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    cwd = Path.cwd()
    env: dict[str, str] = {}
    argv: list[str] | None = None
    for n, line in _logical_lines(text):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        try:
            words = shlex.split(s, comments=True)
        except ValueError as exc:
            raise InputError(p, f"line {n}: {exc}") from None
        if not words:
            continue
        if words in (["set", "-a"], ["set", "+a"], ["set", "-e"], ["set", "-eu"], ["set", "-u"]):
            continue
        if words[0] == "cd" and len(words) == 2 and words[1] in ('$(dirname "$0")', "$(dirname $0)"):
            cwd = p.resolve().parent
            continue
        if words[0] in (".", "source") and len(words) == 2:
            env.update(read_env_file(_resolve(words[1], cwd, p)))
            continue
        if words[0] == "export" or (len(words) == 1 and _ASSIGN.match(words[0])):
            for w in words[1:] if words[0] == "export" else words:
                m = _ASSIGN.match(w)
                if not m:
                    raise InputError(p, f"line {n}: cannot read {s[:60]!r}")
                env[m.group(1)] = m.group(2)
            continue
        rest = words[1:] if words[0] == "exec" else words
        local: dict[str, str] = {}
        while rest and _ASSIGN.match(rest[0]):
            m = _ASSIGN.match(rest[0])
            assert m is not None
            local[m.group(1)] = m.group(2)
            rest = rest[1:]
        if rest and _is_llama_program(rest[0]):
            if argv is not None:
                raise InputError(p, f"line {n}: a second llama-server command")
            argv = rest
            env.update(local)
            continue
        raise InputError(p, f"line {n}: cannot read {s[:60]!r} (expected a llama-server command, VAR=value, "
                            "'. FILE' or 'set -a')")
    if argv is None:
        raise InputError(p, "no llama-server command in the script")
    return argv, env, cwd


def _resolve(name: str, cwd: Path, script: Path) -> Path:
    name = name.replace('"$(dirname "$0")"', str(script.resolve().parent)).replace("$(dirname \"$0\")",
                                                                                 str(script.resolve().parent))
    q = Path(name)
    return q if q.is_absolute() else cwd / q
