"""The interface every run-file target implements, and what writers and readers share.

A *target* is a runtime a recommendation is written for (a llama.cpp fork, an upstream pull request,
mainline llama.cpp). It knows:

- what it can express: the policy families and modes it runs (:attr:`Target.families`,
  :attr:`Target.modes`) and, in :meth:`Target.suggest`, the knobs a study may set, each turned into the
  configuration the runtime will actually execute (slots per layer as *the runtime* derives them);
- how to write it (:meth:`Target.write`: env file, command line, profile);
- how to read it back (:meth:`Target.read`: from a parsed llama-server invocation, the same way the
  runtime does), so that every written file can be checked by reading it;
- the VRAM the runtime spends beyond the expert slots (:meth:`Target.vram_extra`: zero slots, tables).
"""

from __future__ import annotations

import abc
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hotexperts.studies.targets._llama import Flag, Invocation

if TYPE_CHECKING:
    from hotexperts.modelspec import ModelSpec
    from hotexperts.studies.tune import Candidate, Evaluator

__all__ = ["env_file_text", "Target", "WriteContext", "ReadContext", "RunFiles", "common_env", "common_args", "NON_QUANT_KV"]

NON_QUANT_KV = ("f16", "f32", "bf16")


@dataclass(frozen=True)
class WriteContext:
    """What a writer needs beyond the configuration: the model, the serving settings, the trace."""

    model: ModelSpec
    context: int
    kv_type: str = "q8_0"
    ubatch: int = 512
    model_path: str = "MODEL.gguf"
    evaluator: Evaluator | None = None  # for targets that write what they learned (profiles)


@dataclass(frozen=True)
class ReadContext:
    """What a reader needs: the model the command runs and the folder relative paths start from."""

    model: ModelSpec
    cwd: Path = field(default_factory=Path.cwd)


@dataclass
class RunFiles:
    """Files to write (name -> text), the env file the script sources, and the llama-server argv."""

    files: dict[str, str]
    env_file: str | None
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # what env_file assigns (for the printed command)
    notes: list[str] = field(default_factory=list)

    def command(self) -> str:
        """The one command line: variables inline, then llama-server and its flags."""
        pre = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (pre + " " if pre else "") + shlex.join(self.argv)


def common_env(ctx: WriteContext) -> dict[str, str]:
    """llama.cpp's own variables for the serving settings every target shares (``-ngl`` all layers)."""
    env = {
        "LLAMA_ARG_CTX_SIZE": str(ctx.context),
        "LLAMA_ARG_N_GPU_LAYERS": "999",
        "LLAMA_ARG_UBATCH": str(ctx.ubatch),
        "LLAMA_ARG_BATCH": str(ctx.ubatch),
    }
    if ctx.kv_type not in NON_QUANT_KV:
        # NOTE: llama.cpp needs flash attention for a quantized V cache
        env["LLAMA_ARG_FLASH_ATTN"] = "on"
    if ctx.kv_type != "f16":
        env["LLAMA_ARG_CACHE_TYPE_K"] = ctx.kv_type
        env["LLAMA_ARG_CACHE_TYPE_V"] = ctx.kv_type
    return env


def env_file_text(title: str, env: dict[str, str]) -> str:
    """An env file: a comment naming the runtime, then ``KEY=VALUE`` lines quoted for ``sh``."""
    lines = [f"# hotexperts: {title} (source with `set -a; . FILE; set +a`, then start llama-server)"]
    lines += [f"{k}={shlex.quote(v)}" for k, v in env.items()]
    return "\n".join(lines) + "\n"


def common_args(ctx: WriteContext) -> list[str]:
    return ["llama-server", "-m", ctx.model_path]


class Target(abc.ABC):
    """Base of every run-file target (one module each, one line in the registry).

    A target implements :meth:`suggest` and :meth:`write` (abstract: a target without them cannot be
    built); a runtime with a command line also implements :meth:`claims` and :meth:`read`.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    #: policy families the runtime runs
    families: ClassVar[tuple[str, ...]] = ()
    #: execution modes the runtime runs
    modes: ClassVar[tuple[str, ...]] = ("cold-cpu",)
    #: llama-server flags of this runtime beyond llama.cpp's generic ones
    flags: ClassVar[tuple[Flag, ...]] = ()
    #: variables the runtime reads with getenv (no flag)
    env_vars: ClassVar[tuple[str, ...]] = ()
    #: file names this target may write (a rerun removes those of other targets)
    file_names: ClassVar[tuple[str, ...]] = ()
    #: whether the runtime executes what is written (False for the simulator-only ``lab``)
    runnable: ClassVar[bool] = True
    #: model architectures the runtime's cache works for (empty: any)
    archs: ClassVar[tuple[str, ...]] = ()

    def supports(self, model: ModelSpec) -> str | None:
        """None if the runtime runs its cache for ``model``; else why not."""
        if self.archs and model.arch not in self.archs:
            return f"{self.name} runs its cache only for the {', '.join(self.archs)} architecture, not {model.arch}"
        return None

    # -- study side
    @abc.abstractmethod
    def suggest(self, trial: Any, ev: Evaluator, family: str) -> Candidate:
        """Sample the runtime's knobs for ``family`` and return the configuration the runtime runs."""

    def vram_extra(self, cand: Candidate, model: ModelSpec) -> float:
        """Bytes of VRAM the runtime spends beyond ``slots x expert bytes`` (zero slots, id tables)."""
        return 0.0

    # -- files
    @abc.abstractmethod
    def write(self, cand: Candidate, ctx: WriteContext) -> RunFiles:
        """The run files, environment and llama-server argv that make the runtime run ``cand``."""

    def claims(self, inv: Invocation) -> bool:
        """Whether ``inv`` sets this runtime's own knobs (used to tell the target of a command)."""
        return False

    def read(self, inv: Invocation, ctx: ReadContext) -> Candidate:
        """The configuration the runtime runs for ``inv`` (InputError naming the flag it cannot price)."""
        from hotexperts.errors import InputError

        raise InputError(inv.origin, f"target {self.name} has no command line to read")


def host_layers_or_error(inv: Invocation, model: ModelSpec, what: str) -> np.ndarray:
    """Per MoE layer: experts in host memory; an error unless all are (the caches need ``exps=CPU``)."""
    from hotexperts.errors import InputError
    from hotexperts.studies.targets._llama import expert_placement

    host = np.asarray(expert_placement(inv, model.n_layer, model.moe_layers), bool)
    if not host.all():
        gpu = [il for il, h in zip(model.moe_layers, host) if not h]
        raise InputError(inv.origin, f"{what} with experts of layers {gpu[:6]}{'...' if len(gpu) > 6 else ''} in VRAM "
                                     "is not priced: put every layer's experts in host memory (-ot exps=CPU)")
    return host
