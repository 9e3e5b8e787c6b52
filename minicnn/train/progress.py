"""One progress line per epoch: batches done, running loss and accuracy, images/s, ETA.

On a terminal the line is redrawn in place (carriage return), at most every
``interval`` seconds so drawing costs nothing next to a training step.  When
the output is not a terminal (a log file, a pipe, CI) nothing is drawn while
the epoch runs and the finished line is printed once, with no control
characters.  ``enabled=False`` (quiet mode) prints nothing at all.
"""
import sys
import time

_SHORT = {"accuracy": "acc", "val_accuracy": "val_acc"}


def _clock(seconds):
    seconds = int(round(seconds))
    m, s = divmod(seconds, 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def format_logs(logs):
    """'loss 0.2843  acc 0.8967  lr 0.001' from a logs dict (``time`` left out); an ``lr`` that
    is a tuple (one per distinct parameter group) shows as 'lr 0.001/0.0001'."""
    parts = []
    for k, v in logs.items():
        if k == "time":
            continue
        if k == "lr":
            fmt = "/".join(f"{r:.3g}" for r in (v if isinstance(v, tuple) else (v,)))
        else:
            fmt = f"{v:.4f}"
        parts.append(f"{_SHORT.get(k, k)} {fmt}")
    return "  ".join(parts)


class ProgressBar:
    """Progress of one epoch of ``total`` batches.  Call :meth:`update` after each batch
    and :meth:`finish` once at the end."""

    width = 20

    def __init__(self, title, total, stream=None, enabled=True, interval=0.2):
        self.title, self.total = title, int(total)
        self.stream = sys.stdout if stream is None else stream
        self.enabled = enabled
        isatty = getattr(self.stream, "isatty", None)
        self.live = enabled and bool(isatty and isatty())
        self.interval = interval
        self.start = self._last = time.perf_counter()
        self._drawn = 0

    def _bar(self, done):
        filled = self.width * done // max(self.total, 1)
        arrow = ">" if filled < self.width else ""
        return "[" + "=" * filled + arrow + "." * (self.width - filled - len(arrow)) + "]"

    def _head(self, done):
        digits = len(str(self.total))
        return f"{self.title} {done:>{digits}}/{self.total} {self._bar(done)}"

    def update(self, done, images, logs):
        """``done`` batches and ``images`` seen so far; ``logs`` the running means."""
        if not self.live:
            return
        now = time.perf_counter()
        if now - self._last < self.interval and done < self.total:
            return
        self._last = now
        elapsed = now - self.start
        rate = images / elapsed if elapsed > 0 else 0.0
        eta = elapsed / done * (self.total - done) if done else 0.0
        self._draw(f"{self._head(done)} {format_logs(logs)}  {rate:,.0f} img/s  ETA {_clock(eta)}")

    def _draw(self, line):
        pad = max(self._drawn - len(line), 0)
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()
        self._drawn = len(line)

    def finish(self, done, images, seconds, logs):
        """Print the epoch's final line: ``images`` trained in ``seconds``, then all ``logs``."""
        if not self.enabled:
            return
        rate = images / seconds if seconds > 0 else 0.0
        line = f"{self._head(done)} {seconds:.1f}s {rate:,.0f} img/s  {format_logs(logs)}"
        if self.live:
            self._draw(line)
            self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
