"""Incremental splitting of a Server-Sent Events byte stream into lines, in bounded memory.

``LineSplitter`` turns chunks cut anywhere (inside a CRLF pair, inside a UTF-8 character) into the same lines
the whole stream would give, and never holds more than ``max_line`` bytes of an unfinished line.
"""

from __future__ import annotations

MAX_LINE_BYTES = 1 << 20
"""Default cap on one line (1 MiB): longer lines are discarded, not buffered."""

_CR = 0x0D
_LF = b"\n"


class LineSplitter:
    """Split bytes into lines ended by LF, CRLF or a lone CR (the three SSE line ends).

    ``feed`` returns the lines completed by a chunk (without their line end); ``finish`` returns the last,
    unterminated line if there is one. Lines are bytes, so a UTF-8 character cut by a chunk border is whole
    again in its line. A line longer than ``max_line`` bytes is dropped and counted in ``discarded``; the
    splitter then skips to the next line end, so its memory stays bounded however the stream misbehaves.
    """

    __slots__ = ("_buf", "_cr", "_skipping", "discarded", "max_line")

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self.max_line = max_line
        self.discarded = 0
        self._buf = bytearray()
        # The previous chunk ended in CR: an LF opening the next chunk belongs to that CRLF, not a new line.
        self._cr = False
        # The current line already outgrew max_line: drop bytes until its end.
        self._skipping = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """Take the next chunk and return the lines it completes, in order."""
        if not chunk:
            return []
        if self._cr:
            self._cr = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
                if not chunk:
                    return []
        if b"\r" in chunk:
            self._cr = chunk[-1] == _CR
            chunk = chunk.replace(b"\r\n", _LF).replace(b"\r", _LF)
        if _LF not in chunk:
            self._keep(chunk)
            return []
        lines = chunk.split(_LF)
        tail = lines.pop()
        if self._skipping:
            # The first piece ends a line that was already discarded (and counted).
            self._skipping = False
            del lines[0]
        elif self._buf:
            lines[0] = bytes(self._buf) + lines[0]
            self._buf.clear()
        # Only a chunk bigger than the cap can hold an oversized line; skip the per-line check otherwise.
        if len(chunk) + len(lines[0] if lines else b"") > self.max_line:
            kept = [line for line in lines if len(line) <= self.max_line]
            self.discarded += len(lines) - len(kept)
            lines = kept
        self._keep(tail)
        return lines

    def finish(self) -> list[bytes]:
        """End of stream: return the unterminated last line (if any, and not oversized) and reset."""
        last = [bytes(self._buf)] if self._buf and not self._skipping else []
        self._buf.clear()
        self._cr = False
        self._skipping = False
        return last

    def _keep(self, tail: bytes) -> None:
        """Buffer the start of an unfinished line, or start skipping it once it outgrows the cap."""
        if self._skipping or not tail:
            return
        if len(self._buf) + len(tail) > self.max_line:
            self._buf = bytearray()
            self._skipping = True
            self.discarded += 1
        else:
            self._buf += tail
