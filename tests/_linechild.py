"""A child process whose stdout is read line by line with deadlines (shared by the crash and
power-cut tests: a writer prints an acknowledgement per write, the test kills it at a random
moment and must still collect every line it printed before dying)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


class LineChild:
    def __init__(
        self, command: list[str], stderr_path: Path, *, deadline_s: float = 60.0, stdin: int = subprocess.DEVNULL
    ) -> None:
        self.stderr_path = stderr_path
        self.deadline_s = deadline_s
        """Generous: only reached when the child is stuck or dead."""
        self._stderr = open(stderr_path, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(command, stdin=stdin, stdout=subprocess.PIPE, stderr=self._stderr, bufsize=0)
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()
        self._buf = bytearray()
        self._eof = False

    def _fill(self, timeout: float) -> None:
        if self._eof:
            return
        ready, _, _ = select.select([self._fd], [], [], max(0.0, timeout))
        if ready:
            chunk = os.read(self._fd, 1 << 16)
            if chunk:
                self._buf += chunk
            else:
                self._eof = True

    def _pop_line(self) -> str | None:
        end = self._buf.find(b"\n")
        if end < 0:
            return None
        line = bytes(self._buf[:end]).decode()
        del self._buf[: end + 1]
        return line

    def readline(self, deadline: float) -> str | None:
        """The next complete line, or ``None`` at end of output; fails at ``deadline``."""
        while True:
            line = self._pop_line()
            if line is not None:
                return line
            if self._eof:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"the child sent nothing for {self.deadline_s} s{self.diagnostics()}")
            self._fill(remaining)

    def lines(self) -> Iterator[str]:
        """Complete lines until the end of the output; fails after ``deadline_s`` of silence."""
        while (line := self.readline(time.monotonic() + self.deadline_s)) is not None:
            yield line

    def kill(self) -> None:
        """SIGKILL, reap, and keep whatever the child printed before it died."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(self.deadline_s)
        while not self._eof:
            self._fill(self.deadline_s)

    def remaining_lines(self) -> list[str]:
        """Complete lines still buffered (a torn last line was never an acknowledgement)."""
        lines = []
        while (line := self._pop_line()) is not None:
            lines.append(line)
        return lines

    def diagnostics(self) -> str:
        self._stderr.flush()
        err = self.stderr_path.read_text(errors="replace")[-3000:]
        return f"\n--- child exit code {self.proc.poll()}, stderr ---\n{err}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(self.deadline_s)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self._stderr.close()
