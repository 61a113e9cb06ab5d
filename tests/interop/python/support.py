"""What the Python interop tests share: stubs generated from the proto, the spoold binary,
and a spoold process on ephemeral ports whose address is read from its log.

Only plain generated stubs and the standard library: the point of these tests is that a
stub generated in another language is already a full client.
"""

import importlib
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PROTO_DIR = ROOT / "proto"
# Seconds any single wait may take: generous for loaded debug builds. Nothing asserts on time.
PATIENCE = 60.0


def generate_stubs(out_dir=None):
    """Generates spool/v1/spool_pb2.py and spool_pb2_grpc.py with grpcio-tools into
    `out_dir` (a new temporary directory by default), imports them and returns
    (spool_pb2, spool_pb2_grpc)."""
    from grpc_tools import protoc

    out = out_dir or tempfile.mkdtemp(prefix="spool-stubs-")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(PROTO_DIR / "spool" / "v1" / "spool.proto"),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    sys.path.insert(0, str(out))
    pb2 = importlib.import_module("spool.v1.spool_pb2")
    pb2_grpc = importlib.import_module("spool.v1.spool_pb2_grpc")
    return pb2, pb2_grpc


def spoold_binary():
    """$SPOOLD or $SPOOL_BIN (relative to the repository root), else target/debug/spoold,
    built with cargo if missing."""
    explicit = os.environ.get("SPOOLD") or os.environ.get("SPOOL_BIN")
    if explicit:
        return str(ROOT / explicit)
    path = ROOT / "target" / "debug" / "spoold"
    if not path.exists():
        subprocess.run(
            ["cargo", "build", "-p", "spool-broker", "--bin", "spoold"],
            cwd=ROOT,
            check=True,
        )
    return str(path)


class Spoold:
    """One spoold process on ephemeral loopback ports, with `args` added to its command
    line. `start()` returns its gRPC address once it logs `serving`; `log` holds every
    line of its stderr, which is read all along so the pipe never fills."""

    def __init__(self, args):
        self.args = list(args)
        self.proc = None
        self.log = []

    def start(self):
        self.proc = subprocess.Popen(
            [
                spoold_binary(),
                *self.args,
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "SPOOL_LOG": "info"},
            text=True,
        )
        found = queue.Queue()

        def drain(stream):
            for line in stream:
                self.log.append(line.rstrip("\n"))
                m = re.search(r"\bserving\b.*\bgrpc=(\S+)", line)
                if m:
                    found.put(m.group(1))
            found.put(None)  # the process ended

        threading.Thread(target=drain, args=(self.proc.stderr,), daemon=True).start()
        try:
            addr = found.get(timeout=PATIENCE)
        except queue.Empty:
            addr = None
        if addr is None:
            self.proc.kill()
            raise AssertionError("spoold never logged `serving`:\n" + "\n".join(self.log))
        return addr

    def stop(self):
        """SIGTERM; the broker must exit 0."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=PATIENCE)
        assert code == 0, f"spoold exited {code} after SIGTERM:\n" + "\n".join(self.log)
        self.proc = None

    def close(self):
        """Stops it whatever its state: SIGTERM, then SIGKILL if it lingers."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=PATIENCE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def plain_broker():
    """A plain spoold on a temporary data directory: a generator for a pytest fixture,
    yielding its gRPC address and stopping it after the test."""
    data = tempfile.TemporaryDirectory(prefix="spool-py-")
    spoold = Spoold(["--data-dir", data.name])
    try:
        yield spoold.start()
    finally:
        spoold.close()
        data.cleanup()
