"""For tests that send a child process SIGINT: a suite started in the background (`cmd &` in a script, nohup) runs
with SIGINT ignored, and a child inherits that, so Python installs no KeyboardInterrupt handler in it and the
programs under test rightly keep ignoring Ctrl-C. Children get the default disposition back, as in a terminal."""
from __future__ import annotations

import signal


def default_sigint() -> None:
    """preexec_fn for subprocess.Popen / run: SIGINT as a terminal's foreground process has it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
