"""The server process: start it on a free loopback port, wait until it answers, watch its memory, stop it and
its children."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx2
import psutil

from core.paths import Stopped
from core.serving.engines import Engine
from core.serving.limits import HOST, MEMORY_SAMPLE_S, SERVER_START_TIMEOUT_S, STOP_TIMEOUT_S, ServingError, ShouldStop


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: old TIME_WAIT sockets are no user
        try:
            s.bind((HOST, port))
        except OSError:
            raise ServingError(f"port {port} on {HOST} is already in use by another program; pick another port "
                               "or leave it out and the lab picks a free one") from None


def last_log_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def parse_prometheus(text: str) -> dict[str, float]:
    """'name value' lines of a Prometheus text exposition; comments and labelled series are skipped."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.startswith("#") and "{" not in parts[0]:
            try:
                out[parts[0]] = float(parts[1])
            except ValueError:
                pass
    return out


def peak_rss_bytes(pid: int) -> int:
    """The kernel's own high-water mark of a process's resident memory (VmHWM in /proc/<pid>/status), in bytes.

    Unlike sampling, it misses no short peak; it covers that process only (llama-server runs no children)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError as e:
        raise ServingError(f"cannot read the peak memory of process {pid} ({e}); it needs Linux's /proc") from None
    found = re.search(r"VmHWM:\s*(\d+)\s*kB", status)
    if found is None:
        raise ServingError(f"/proc/{pid}/status has no VmHWM line; cannot read the process's peak memory")
    return int(found.group(1)) * 1024


class MemoryWatch:
    """Peak resident memory of a process and all its children, sampled on a thread."""

    def __init__(self, pid: int, interval_s: float = MEMORY_SAMPLE_S):
        self.pid, self.interval_s = pid, interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def rss_bytes(self) -> int:
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_bytes = max(self.peak_bytes, self.rss_bytes())

    def __enter__(self) -> "MemoryWatch":
        self.peak_bytes = self.rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self.rss_bytes())


class Server:
    """One server process on 127.0.0.1, in its own process group so that stopping it stops its children."""

    def __init__(self, engine: Engine, port: int | None = None, start_timeout_s: float = SERVER_START_TIMEOUT_S,
                 should_stop: ShouldStop = lambda: False):
        if port is not None:
            check_port_free(port)
        self.engine, self.port = engine, port or free_port()
        self.start_timeout_s, self.should_stop = start_timeout_s, should_stop
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="lab-serve-", suffix=".log")[1])

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> "Server":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        env = os.environ | self.engine.env
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.engine.argv(self.port), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.should_stop():
                raise Stopped("stopped while the server was starting; nothing was measured")
            if self.proc.poll() is not None:
                raise ServingError(f"the {self.engine.server} exited while starting (status {self.proc.returncode}); "
                                   f"its last log lines:\n{self.last_log_lines() or '(empty log)'}")
            try:
                if httpx2.get(f"{self.base_url}{self.engine.ready_path}", timeout=2.0).status_code == 200:
                    return
            except httpx2.HTTPError:
                pass
            time.sleep(0.25)
        raise ServingError(f"the {self.engine.server} did not answer on {self.base_url} within "
                           f"{self.start_timeout_s:.0f} s; its last log line: {last_log_line(self.log_path)}")

    def stop(self) -> None:
        """SIGTERM to the whole process group, SIGKILL after STOP_TIMEOUT_S; idempotent. Removes the log."""
        try:
            self._stop_group()
        finally:
            self.log_path.unlink(missing_ok=True)

    def _stop_group(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT_S)
        except ProcessLookupError:
            pass
        try:  # children that outlived the leader still carry its group id
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def check_alive(self) -> None:
        """A clear error, with the server's last words, when it died during a load."""
        if self.proc is not None and self.proc.poll() is not None:
            raise ServingError(f"the {self.engine.server} exited during the load (status {self.proc.returncode}); "
                               f"the points measured before it are kept. Its last log lines:\n"
                               f"{self.last_log_lines() or '(empty log)'}")

    def metrics(self) -> dict[str, float]:
        """The server's own Prometheus counters ("llamacpp:tokens_predicted_total" -> value); {} when it has none."""
        if not self.engine.metrics_path:
            return {}
        try:
            text = httpx2.get(f"{self.base_url}{self.engine.metrics_path}", timeout=5.0).text
        except httpx2.HTTPError:
            return {}
        return parse_prometheus(text)

    def last_log_lines(self, n: int = 5) -> str:
        """The server's last n log lines: what a crash mid-run said."""
        try:
            lines = [ln.rstrip() for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def kv_cache_bytes_reported(self) -> int | None:
        """llama.cpp prints its KV cache size at start ("... KV buffer size = 12.00 MiB"); None if absent."""
        text = self.log_path.read_text(errors="replace")
        sizes = [float(m) for m in re.findall(r"KV (?:self )?buffer size\s*=\s*([\d.]+)\s*MiB", text)]
        return int(sum(sizes) * 2**20) if sizes else None

    def buffers_reported_mib(self) -> dict[str, float]:
        """llama.cpp's own buffer sizes at start, MiB, by kind ("CPU compute buffer size = 14.42 MiB" -> compute)."""
        text = self.log_path.read_text(errors="replace")
        out: dict[str, float] = {}
        for kind, size in re.findall(r"\b(compute|output) buffer size\s*=\s*([\d.]+)\s*MiB", text):
            out[kind] = out.get(kind, 0.0) + float(size)
        return out

    def slot_context_reported(self) -> int | None:
        """Tokens of context each llama-server slot really holds ("n_ctx_slot = 256"): it rounds up to 256."""
        found = re.findall(r"n_ctx_slot\s*=\s*(\d+)", self.log_path.read_text(errors="replace"))
        return int(found[0]) if found else None

    def kv_cells_reported(self) -> int | None:
        """The context llama.cpp really allocated ("llama_context: n_ctx = 512"): it rounds n_ctx up."""
        found = re.findall(r"llama_context:\s+n_ctx\s*=\s*(\d+)", self.log_path.read_text(errors="replace"))
        return int(found[0]) if found else None
