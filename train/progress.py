"""A one-line progress bar for people watching `train` in a terminal.

Only when stdout is a TTY (`docker run -it ... train` on EC2). Everywhere else (SageMaker,
CloudWatch, `docker logs`, pipes) there is no bar and the trainer's log lines stay one
line per event, exactly as the README's metric_definitions parse them.
"""

from __future__ import annotations

import shutil
import sys
import time

REFRESH_S = 0.2  # redraw at most this often: steps can be faster than a terminal


class ProgressBar:
    def __init__(self, label: str, total: int, done: int = 0, stream=None):
        self.label, self.total, self.done = label, max(1, total), done
        self.stream = stream or sys.stdout
        self.text = ""  # the latest metrics line, shown after the bar
        self.drawn_at = 0.0

    @classmethod
    def for_terminal(cls, label: str, total: int, done: int = 0, stream=None) -> ProgressBar | None:
        """A bar when the stream is a terminal, else None (log lines instead)."""
        stream = stream or sys.stdout
        isatty = getattr(stream, "isatty", None)
        return cls(label, total, done, stream) if isatty and isatty() else None

    def note(self, text: str, done: int) -> None:
        """Show `text` (the latest metrics line) after the bar, redrawing now."""
        self.text = text
        self.update(done, force=True)

    def update(self, done: int, force: bool = False) -> None:
        self.done = done
        now = time.monotonic()
        if not force and now - self.drawn_at < REFRESH_S and done < self.total:
            return
        self.drawn_at = now
        width = shutil.get_terminal_size((100, 20)).columns
        counter = f"{self.label} {done}/{self.total}"
        room = max(10, min(40, width - len(counter) - len(self.text) - 6))
        filled = room * min(done, self.total) // self.total
        line = f"{counter} [{'#' * filled}{'.' * (room - filled)}] {self.text}"
        self.stream.write("\r" + line[: width - 1].ljust(width - 1))
        self.stream.flush()

    def close(self) -> None:
        self.update(self.done, force=True)
        self.stream.write("\n")
        self.stream.flush()
