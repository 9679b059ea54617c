"""Starting `forescale serve` in a test, and stopping it the way an operator would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 20) -> None:
    """Ctrl-C first (the service shuts its scheduler down cleanly), kill if it hangs."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def serving(config: dict[str, Any], folder: Path, kubeconfig: Path
            ) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`forescale serve` on `config` (written to `folder`), talking to the cluster in
    `kubeconfig`, its output in `folder/forescale.log`; stopped on the way out."""
    cfg_path = folder / "forescale.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    log_path = folder / "forescale.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", "serve", "--config", str(cfg_path)],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(kubeconfig)})
        try:
            yield proc, log_path
        finally:
            stop_process(proc)
