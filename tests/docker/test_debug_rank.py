"""run-local --debug-rank: a real debugpy client (the Debug Adapter Protocol, as VS Code speaks it) attaches to
the rank, stops at a breakpoint in that rank's process, reads a variable and lets the run finish."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

from tests.conftest import CLI, ROOT

SCRIPT = """import os
rank = int(os.environ["RANK"])
value = rank * 10
print(f"rank {rank} passed the breakpoint with value {value}", flush=True)
"""
BREAK_LINE = 4


class Dap:
    """A minimal DAP client: Content-Length framed JSON over TCP."""

    def __init__(self, sock: socket.socket):
        self.sock, self.buffer, self.seq = sock, b"", 0

    def send(self, command: str, **arguments) -> int:
        self.seq += 1
        body = json.dumps({"seq": self.seq, "type": "request", "command": command, "arguments": arguments}).encode()
        self.sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        return self.seq

    def _read(self) -> dict:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        header, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        length = int(header.split(b"Content-Length:")[1].strip())
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return json.loads(body)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the debug server closed the connection")
        self.buffer += chunk

    def until(self, wanted) -> dict:
        while True:
            message = self._read()
            if wanted(message):
                return message

    def response(self, seq: int) -> dict:
        answer = self.until(lambda m: m.get("type") == "response" and m.get("request_seq") == seq)
        assert answer["success"], answer
        return answer

    def event(self, name: str) -> dict:
        return self.until(lambda m: m.get("type") == "event" and m.get("event") == name)


def attach(port: int, deadline: float) -> Dap:
    """Connect once the rank's container publishes the port and its debugpy listens (Docker's port proxy accepts
    before that, then hangs up)."""
    while True:
        sock = socket.socket()
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            dap = Dap(sock)
            dap.response(dap.send("initialize", adapterID="debugpy", clientID="amltrain-test", pathFormat="path",
                                  linesStartAt1=True, columnsStartAt1=True))
            return dap
        except (ConnectionError, OSError):
            sock.close()
            assert time.monotonic() < deadline, "debugpy never answered on the published port"
            time.sleep(0.5)


def test_a_debugger_attaches_to_the_chosen_rank_and_stops_at_a_breakpoint(cpu_image, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "debugee.py").write_text(SCRIPT)
    env = {**os.environ, "INVOKE_JOB_SOURCE_DIR": str(source), "INVOKE_JOB_SCRIPT": "debugee.py",
           "INVOKE_JOB_EXPERIMENT": "debug-rank", "INVOKE_LOCAL_RUNS_DIR": str(tmp_path / "runs"),
           "INVOKE_LOCAL_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.Popen([CLI, "run-local", "--procs-per-node", "2", "--debug-rank", "1"], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = [run.stdout.readline(), run.stdout.readline()]
        assert lines[1].startswith("rank 1 waits for a debugger: attach to 127.0.0.1:5678"), "".join(lines)
        dap = attach(5678, time.monotonic() + 90)
        attached = dap.send("attach", justMyCode=True)
        dap.event("initialized")
        path = "/mnt/azureml/wd/debugee.py"
        placed = dap.response(dap.send("setBreakpoints", source={"path": path}, breakpoints=[{"line": BREAK_LINE}]))
        assert placed["body"]["breakpoints"][0]["verified"], placed
        dap.response(dap.send("configurationDone"))
        dap.response(attached)
        stopped = dap.event("stopped")
        assert stopped["body"]["reason"] == "breakpoint", stopped
        frames = dap.response(dap.send("stackTrace", threadId=stopped["body"]["threadId"]))["body"]["stackFrames"]
        assert (frames[0]["source"]["path"], frames[0]["line"]) == (path, BREAK_LINE)
        value = dap.response(dap.send("evaluate", expression="value", frameId=frames[0]["id"], context="repl"))
        assert value["body"]["result"] == "10"  # rank 1's process, not rank 0's
        dap.send("continue", threadId=stopped["body"]["threadId"])
        output, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.terminate()
            run.wait(timeout=30)
    assert run.returncode == 0, "".join(lines) + output
    assert "rank 1 passed the breakpoint with value 10" in output and "rank 0 passed the breakpoint" in output
