"""A real small filesystem that fills up: a tmpfs of a few MiB mounted for one test.

Mounting needs root (or CAP_SYS_ADMIN); ``SmallDisk.mount`` raises ``CannotMount`` saying why
otherwise, and the tests skip with that reason. ``fill(leave=…)`` writes a filler file until
only that many bytes are free; ``unfill()`` deletes it, and the space is back at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

__all__ = ["CannotMount", "SmallDisk", "small_disk"]

CHUNK = 1 << 20


class CannotMount(RuntimeError):
    """No tmpfs could be mounted here; ``str()`` says why."""


class SmallDisk:
    """A tmpfs of ``size`` bytes at ``path`` (made if missing)."""

    def __init__(self, path: Path, size: int) -> None:
        self.path, self.size = path, size
        self.mounted = False
        self._fillers: list[Path] = []

    def mount(self) -> SmallDisk:
        self.path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            raise CannotMount("mounting a tmpfs needs root")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755",
                               "tmpfs", str(self.path)], capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            raise CannotMount(f"mount -t tmpfs failed: {(done.stderr or done.stdout).strip()}")
        self.mounted = True
        return self

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)
            self.mounted = False

    @property
    def free(self) -> int:
        return shutil.disk_usage(self.path).free

    def fill(self, *, leave: int) -> int:
        """Write a filler file so that about ``leave`` bytes stay free; the bytes written."""
        filler = self.path / f"filler-{len(self._fillers)}"
        self._fillers.append(filler)
        want = max(0, self.free - leave)
        written = 0
        with filler.open("wb") as f:
            block = b"\0" * CHUNK
            while written < want:
                n = min(CHUNK, want - written)
                try:
                    f.write(block[:n])
                    f.flush()
                except OSError:  # full before we thought: that is what we wanted
                    break
                written += n
        return written

    def unfill(self) -> None:
        """Delete the filler files: the space is free again."""
        for filler in self._fillers:
            with contextlib.suppress(FileNotFoundError):
                filler.unlink()
        self._fillers.clear()


@contextlib.contextmanager
def small_disk(path: Path, size: int) -> Iterator[SmallDisk]:
    """``with small_disk(path, 64 << 20) as disk:`` — mounted, and unmounted afterwards."""
    disk = SmallDisk(path, size).mount()
    try:
        yield disk
    finally:
        disk.unmount()
