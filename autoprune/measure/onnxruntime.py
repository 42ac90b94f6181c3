"""The ``onnxruntime`` latency backend: the model exported to ONNX and run by an ONNX Runtime CPU session.

Needs the optional extra: ``pip install 'autoprune[onnx]'``.

The session is configured as it would serve: intra-op threads spin while idle (ONNX
Runtime's default, its fastest setting for back-to-back requests) and the graph is
fully optimised (conv+BN+activation fusion). Two sessions with their own spinning pools
fight for the cores when their calls are interleaved, which is what paired timing does
(the same pair measured 0.38 and 0.69 in two runs on 2 cores). Paired timing therefore
runs each session in blocks of calls (:class:`autoprune.measure.latency.PairedTimer`), so a
block's spinning threads have the cores to themselves after the first call.

``thread_pool: shared`` runs every session on ONNX Runtime's *process-wide* thread pool
(``SessionOptions.use_per_session_threads = False`` after ``set_global_thread_pool_sizes``):
one pool serves the reference and the candidate in turn. ONNX Runtime makes that pool
permanent for the process: afterwards every session must be opened with
``use_per_session_threads = False`` (autoprune's own sessions do, through
:func:`autoprune.formats.onnx.ort_session`), and a plain ``InferenceSession(path)`` opened
later in the same process fails, ONNX Runtime's own static quantiser included. So the
default is ``per-session`` (ONNX Runtime's own default); ``shared`` is for a process that
only times.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autoprune.errors import ConfigError
from autoprune.formats.onnx import as_args, ensure_shared_pool, ort_session, require_onnx, shared_pool_threads
from autoprune.graph.layers import ExampleInput
from autoprune.measure.backends import Runner
from autoprune.measure.onnx_file import OnnxFileBackend

log = logging.getLogger(__name__)

GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
THREAD_POOLS = ("shared", "per-session")
_owned = False


def own_process() -> None:
    """Declare this process autoprune's own (the ``autoprune`` command): ratios are timed on ONNX Runtime's shared pool.

    The shared pool is permanent for a process and forbids plain ONNX Runtime sessions in it
    afterwards, so a library caller (a notebook, a test run) keeps per-session pools with
    spinning off unless it calls this; the ``autoprune`` command does at start
    (:func:`autoprune.__main__.console`), as every command's ratios must be in the regime the
    model is served in. On the demo's delivered ResNet-20 (2 cores, batch 1, fresh processes,
    ``experiments/results/runtimes.md``): spinning off 0.467 of dense (dense 0.743 ms), the shared
    pool 0.649 (dense 0.358 ms), per-session spinning as served 0.680 (dense 0.383 ms): without
    spinning every parallel operator waits for its threads to wake, which the dense model pays
    more often, so a search timed that way met its target in its own process (0.469) and missed it
    as served.
    """
    global _owned
    _owned = True


class OnnxRuntimeBackend(OnnxFileBackend):
    """Latency backend: the model exported to ONNX and run by an ONNX Runtime CPU session.

    Export, the check against torch, the channel multiple and the blocked paired schedule come
    from :class:`~autoprune.measure.onnx_file.OnnxFileBackend`; this class opens the sessions.

    Args:
        threads: Intra-op threads (None: ``torch.get_num_threads()`` now).
        spinning: Idle intra-op threads spin (ONNX Runtime's default and serving setting);
            False sets ``session.intra_op.allow_spinning = 0`` (per-session pools only:
            ONNX Runtime's shared pool always spins).
        graph_optimization: ``disable``, ``basic``, ``extended`` or ``all`` (default: all
            fusions, as served).
        thread_pool: ``per-session`` (default, ONNX Runtime's own): each session owns a pool;
            ``shared``: every session of this process runs on one global pool, so interleaved
            sessions do not fight, but no other session can be opened in the process
            (see the module docstring). ONNX Runtime sizes the shared
            pool once per process: a later backend asking another size runs on the existing
            pool (a warning is logged and :meth:`settings` records the real size), and
            once it exists no per-session pool can be created in the process.

    Raises:
        ConfigError: onnx or onnxruntime is not installed, an option is invalid, or
            ``per-session`` is asked in a process whose shared pool exists.
    """

    name = "onnxruntime"
    @classmethod
    def ratio_options(cls, options: Mapping[str, Any], *, timing_only: bool = False) -> dict[str, Any]:
        """The serving options with pools that do not fight for the cores when two sessions are timed in turn.

        runtimes.md, "Timing protocols" (ResNet-20, 2 cores, blocks of 10 calls): per-session
        spinning pools (how ONNX Runtime serves) gave a ratio of 0.54 whose repeats varied by 15%
        (CV), against 0.40 +-0.4% on the process-wide shared pool, in-process and in fresh
        processes alike; per-session pools without spinning gave 0.39-0.40 with a few % of noise.

        A process that only times (``timing_only``: the fresh children behind finalists, the final
        table and ``estimate``) or that autoprune owns (:func:`own_process`: the ``autoprune``
        command, whose search times in its own process) uses the shared pool. Any other process
        uses per-session pools with spinning off (a different regime: see :func:`own_process`), because the shared pool is permanent for a process and forbids any other
        kind of session in it (a notebook or a test run would be stuck with it); a process whose
        shared pool already exists keeps using it.
        """
        rest = {k: v for k, v in options.items() if k not in ("spinning", "thread_pool")}
        if timing_only or _owned or shared_pool_threads() is not None:
            return {**rest, "thread_pool": "shared"}
        return {**rest, "thread_pool": "per-session", "spinning": False}

    def __init__(
        self,
        threads: int | None = None,
        *,
        spinning: bool = True,
        graph_optimization: str = "all",
        thread_pool: str = "per-session",
    ) -> None:
        _, self._ort = require_onnx("latency.backend 'onnxruntime'")
        super().__init__(threads)
        if not isinstance(spinning, bool):
            raise ConfigError(f"latency.backend_options.spinning: expected true or false, got {spinning!r}")
        if graph_optimization not in GRAPH_OPTIMIZATION_LEVELS:
            raise ConfigError(
                f"latency.backend_options.graph_optimization: unknown level {graph_optimization!r}; "
                f"allowed: {', '.join(GRAPH_OPTIMIZATION_LEVELS)}"
            )
        if thread_pool not in THREAD_POOLS:
            raise ConfigError(f"latency.backend_options.thread_pool: unknown pool {thread_pool!r}; allowed: {', '.join(THREAD_POOLS)}")
        if thread_pool == "shared" and not spinning:
            raise ConfigError(
                "latency.backend_options.spinning: false needs thread_pool 'per-session' "
                "(ONNX Runtime's shared pool always spins)"
            )
        self.spinning = spinning
        self.graph_optimization = graph_optimization
        self.thread_pool = thread_pool
        if thread_pool == "shared":
            size = ensure_shared_pool(self._ort, self.threads)
            if size != self.threads:
                log.warning("onnxruntime: this process's shared thread pool has %d threads, not %d; timing on it", size, self.threads)
                self.threads = size
        elif shared_pool_threads() is not None:
            raise ConfigError(
                "latency.backend_options.thread_pool: 'per-session' is impossible in this process: ONNX Runtime's "
                "shared pool exists (every session must use it); use 'shared' or a new process"
            )

    @property
    def runs_on_calling_thread(self) -> bool:
        """With one intra-op thread ONNX Runtime computes on the caller (what a ``thread`` clock needs)."""
        return self.threads == 1

    def settings(self) -> dict[str, Any]:
        """The runtime settings every result measured on this backend is recorded with."""
        return {
            "backend": self.name,
            "version": self._ort.__version__,
            "provider": "CPUExecutionProvider",
            "threads": self.threads,
            "spinning": self.spinning,
            "graph_optimization": self.graph_optimization,
            "thread_pool": self.thread_pool,
        }

    def session_options(self) -> Any:
        """The ``onnxruntime.SessionOptions`` of every session this backend opens."""
        ort = self._ort
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.graph_optimization]
        if self.thread_pool == "shared":
            opts.use_per_session_threads = False
        else:
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        return opts

    def session(self, path: str | Path) -> Any:
        """Open an ``onnxruntime.InferenceSession`` on the ONNX file at ``path`` with :meth:`session_options`."""
        return ort_session(self._ort, path, self.threads, self.session_options())

    def prepare_file(self, path: str | Path, example_input: ExampleInput) -> Runner:
        """A runner of one inference of the ONNX file at ``path`` (e.g. an int8 artifact) on ``example_input``.

        The runner returns the session's outputs (the timers ignore them; :meth:`prepare` checks them).
        """
        session = self.session(path)
        feeds = {i.name: a.detach().cpu().numpy() for i, a in zip(session.get_inputs(), as_args(example_input))}
        run_session = session.run

        def run() -> list[Any]:
            return run_session(None, feeds)

        return run


__all__ = ["GRAPH_OPTIMIZATION_LEVELS", "THREAD_POOLS", "OnnxRuntimeBackend"]
