"""Process-wide settings the entry points (experiments.run, experiments.run_all) apply before torch is imported.

Each is a default: a value already in the environment wins. Both are recorded with every run (summary.json's
environment holds the allocator setting). Also: Ctrl-C in the seconds the libraries take to import
(quiet_ctrl_c_while_starting).
"""
from __future__ import annotations

import os
import signal
import sys

DEFAULTS = {
    # Idle OpenMP threads that spin (the default) stall every parallel op when another process holds a core; on a busy
    # 2-core machine a 576x576 SVD took 13 s instead of 0.16 s with passive waiting.
    "OMP_WAIT_POLICY": "PASSIVE",
    # The CUDA caching allocator otherwise keeps fixed-size segments. BAdam frees one block's fp32 copies and Adam
    # moments and allocates the next block's at every switch while activation sizes vary from batch to batch; fixed
    # segments then fragment (H100, Llama 3-8B, K=2: peak reserved 26.8 GB for 20.7 GB allocated; Llama 2-7B 29.9 GB
    # for 18.4 GB). Expandable segments grow one mapping instead. One setting for every method, so comparisons hold.
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
}


def apply_defaults() -> None:
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)


def _exit_while_starting(*_args) -> None:
    sys.stderr.write("\nstopped by Ctrl-C while starting: nothing was written\n")
    sys.stderr.flush()
    os._exit(130)  # the shell's code for a process ended by SIGINT; nothing to clean up yet


def quiet_ctrl_c_while_starting() -> None:
    """For an entry point run as a script: Ctrl-C while torch and the libraries are still being imported (seconds)
    ends the process with one line and exit code 130 instead of an import traceback. Its main() calls ctrl_c_raises()
    first, so that Ctrl-C then raises KeyboardInterrupt, which it turns into its own line. Where SIGINT is ignored (a
    background job), it stays ignored."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _exit_while_starting)


def exit_code_on_ctrl_c(main, kept: str) -> int:
    """main(), with Ctrl-C ending the process in one line ("stopped by Ctrl-C: <kept>") and exit code 130 instead of
    a traceback. For the entry points run_all starts as child processes (python -m eval, plots): run_all prints its
    own line for the same Ctrl-C, so a child's traceback would only bury it."""
    ctrl_c_raises()
    try:
        return main()
    except KeyboardInterrupt:
        print(f"\nstopped by Ctrl-C: {kept}", file=sys.stderr)
        return 130  # the shell's code for a process ended by SIGINT


def ctrl_c_raises() -> None:
    """Undo quiet_ctrl_c_while_starting: Ctrl-C raises KeyboardInterrupt again."""
    if signal.getsignal(signal.SIGINT) is _exit_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)
