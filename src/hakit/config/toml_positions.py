"""Where a key is in a TOML source: key path -> line number.

tomllib returns plain dicts without positions, so error messages that name a
line need a second, structural pass over the text. This is that pass: a small
scanner that understands just enough TOML (tables, arrays of tables, dotted
and quoted keys, strings of every kind, arrays and inline tables spanning
lines, comments) to record the line on which each key path first appears.

It is only run on text tomllib has already accepted, but it never loops
forever on anything: every step consumes at least one character. Nor does it
recurse without bound: arrays and inline tables deeper than ``MAX_NESTING`` are
skipped in a loop (``too_deep`` says where), so no file exhausts the stack.

Paths use the same shape as pydantic error locations: table names and keys
are strings, array indexes are ints, so ``("nodes", 1, "port")`` is the
``port`` key of the second ``[[nodes]]`` table.
"""

from __future__ import annotations

import bisect
import re
import tomllib

KeyPath = tuple[str | int, ...]

_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_SCALAR_END = frozenset(",]}\n#")
_SYNTAX_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$|\s*\(at end of document\)$")
# Arrays and inline tables inside one another: a hakit.toml needs 2 or 3 levels;
# tomllib itself runs out of stack at a few hundred.
MAX_NESTING = 50


def key_lines(source: str) -> dict[KeyPath, int]:
    """Every key path in ``source`` (tables, keys, array elements) -> its first line (1-based)."""
    return _Scanner(source).scan()


def too_deep(source: str) -> tuple[int, KeyPath] | None:
    """Where arrays or inline tables first nest deeper than ``MAX_NESTING``: (line, the key
    whose value it is), or None."""
    scanner = _Scanner(source)
    scanner.scan()
    return scanner.too_deep


def locate(lines: dict[KeyPath, int], path: KeyPath) -> int:
    """The line of ``path``, or of its longest prefix that exists; 1 if none does.

    A missing key thus points at the header of the table it belongs in, and a
    value inside an inline table or array points at the line of its key.
    """
    for end in range(len(path), 0, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return 1


def syntax_error_position(message: str, source: str) -> tuple[int, str]:
    """Split a ``tomllib.TOMLDecodeError`` message into (line, message without position)."""
    match = _SYNTAX_POSITION.search(message)
    if match is None:
        return 1, message
    text = message[: match.start()]
    if match.group(1) is None:  # "at end of document"
        return source.count("\n") + 1, f"{text} at the end of the file"
    return int(match.group(1)), f"{text} at column {match.group(2)}"


class _Scanner:
    def __init__(self, source: str) -> None:
        self.src = source
        self.pos = 0
        self.newlines = [i for i, char in enumerate(source) if char == "\n"]
        self.lines: dict[KeyPath, int] = {}
        self.array_counts: dict[KeyPath, int] = {}  # [[array]] path -> tables seen so far
        self.depth = 0  # arrays and inline tables open around pos
        self.value_key: KeyPath = ()  # the key of the (outermost) value being scanned
        self.too_deep: tuple[int, KeyPath] | None = None  # the first value nested too deep

    def scan(self) -> dict[KeyPath, int]:
        table: KeyPath = ()
        for _ in range(len(self.src) + 1):  # each round consumes at least one character
            self.skip_blank(newlines=True)
            if self.pos >= len(self.src):
                break
            start = self.pos
            if self.peek() == "[":
                table = self.header()
            else:
                self.key_value(table)
            if self.pos == start:
                self.pos += 1
        return self.lines

    # --- low level -----------------------------------------------------------

    def peek(self, offset: int = 0) -> str:
        index = self.pos + offset
        return self.src[index] if index < len(self.src) else ""

    def line(self) -> int:
        return bisect.bisect_left(self.newlines, self.pos) + 1

    def record(self, path: KeyPath, line: int) -> None:
        self.lines.setdefault(path, line)

    def skip_blank(self, newlines: bool) -> None:
        """Skip spaces, comments and (if ``newlines``) line breaks."""
        while self.pos < len(self.src):
            char = self.src[self.pos]
            if char in " \t\r" or (newlines and char == "\n"):
                self.pos += 1
            elif char == "#":
                end = self.src.find("\n", self.pos)
                self.pos = len(self.src) if end < 0 else end
            else:
                return

    # --- structure -----------------------------------------------------------

    def header(self) -> KeyPath:
        line = self.line()
        is_array = self.src.startswith("[[", self.pos)
        self.pos += 2 if is_array else 1
        parts = self.key()
        self.skip_blank(newlines=False)
        self.pos += 2 if is_array else 1  # the closing bracket(s)
        path = self.resolve(parts[:-1]) + tuple(parts[-1:])
        for end in range(1, len(path) + 1):
            self.record(path[:end], line)
        if not is_array:
            return path
        index = self.array_counts.get(path, 0)
        self.array_counts[path] = index + 1
        self.record((*path, index), line)
        return (*path, index)

    def resolve(self, parts: list[str]) -> KeyPath:
        """A header's parent keys, with the current index of every array of tables in them."""
        path: KeyPath = ()
        for part in parts:
            path += (part,)
            count = self.array_counts.get(path)
            if count:
                path += (count - 1,)
        return path

    def key(self) -> list[str]:
        """A possibly dotted, possibly quoted key."""
        parts: list[str] = []
        for _ in range(len(self.src) + 1):
            self.skip_blank(newlines=False)
            char = self.peek()
            if char in ('"', "'"):
                start = self.pos + 1
                self.string()
                parts.append(_quoted_key(self.src[start - 1 : self.pos]))
            else:
                start = self.pos
                while self.peek() and self.peek() in _BARE_KEY_CHARS:
                    self.pos += 1
                parts.append(self.src[start : self.pos])
            self.skip_blank(newlines=False)
            if self.peek() != ".":
                break
            self.pos += 1
        return parts

    def key_value(self, table: KeyPath) -> None:
        line = self.line()
        path = table + tuple(self.key())
        for end in range(len(table) + 1, len(path) + 1):
            self.record(path[:end], line)
        if self.depth == 0:
            self.value_key = path
        self.skip_blank(newlines=False)
        if self.peek() == "=":
            self.pos += 1
        self.skip_blank(newlines=False)
        self.value(path)

    def value(self, path: KeyPath) -> None:
        char = self.peek()
        if char in ('"', "'"):
            self.string()
        elif char in ("[", "{") and self.depth >= MAX_NESTING:
            if self.too_deep is None:
                self.too_deep = (self.line(), self.value_key)
            self.skip_nested()
        elif char in ("[", "{"):
            self.depth += 1
            if char == "[":
                self.array(path)
            else:
                self.inline_table(path)
            self.depth -= 1
        else:
            while self.peek() and self.peek() not in _SCALAR_END:
                self.pos += 1

    def array(self, path: KeyPath) -> None:
        self.pos += 1  # [
        for index in range(len(self.src) + 1):
            self.skip_blank(newlines=True)
            if self.peek() in ("]", ""):
                break
            start = self.pos
            self.record((*path, index), self.line())
            self.value((*path, index))
            self.skip_blank(newlines=True)
            if self.peek() == "," or self.pos == start:
                self.pos += 1
        self.pos += 1  # ]

    def inline_table(self, path: KeyPath) -> None:
        self.pos += 1  # {
        for _ in range(len(self.src) + 1):
            self.skip_blank(newlines=True)
            if self.peek() in ("}", ""):
                break
            start = self.pos
            self.key_value(path)
            self.skip_blank(newlines=True)
            if self.peek() == "," or self.pos == start:
                self.pos += 1
        self.pos += 1  # }

    def skip_nested(self) -> None:
        """Skip the array or inline table at ``pos`` whole, in a loop (no recursion)."""
        depth = 0
        while self.pos < len(self.src):
            char = self.src[self.pos]
            if char in ('"', "'"):
                self.string()
                continue
            if char == "#":
                self.skip_blank(newlines=False)
                continue
            self.pos += 1
            if char in ("[", "{"):
                depth += 1
            elif char in ("]", "}"):
                depth -= 1
                if depth <= 0:
                    return

    def string(self) -> None:
        """Skip a basic, literal or multi-line string starting at ``pos``."""
        quote = self.peek()
        escapes = quote == '"'
        if self.src.startswith(quote * 3, self.pos):
            self.pos += 3
            end = self.find_closing(quote * 3, escapes)
            # A multi-line string may end with up to two extra quotes: """a"""""
            extra = 0
            while extra < 2 and self.src.startswith(quote, end + 3 + extra):
                extra += 1
            self.pos = end + 3 + extra
        else:
            self.pos += 1
            self.pos = self.find_closing(quote, escapes) + 1

    def find_closing(self, delimiter: str, escapes: bool) -> int:
        index = self.pos
        while index < len(self.src):
            if escapes and self.src[index] == "\\":
                index += 2
            elif self.src.startswith(delimiter, index):
                return index
            else:
                index += 1
        return len(self.src)


def _quoted_key(quoted: str) -> str:
    """The value of a quoted key, decoded by tomllib itself so escapes are exact."""
    try:
        return next(iter(tomllib.loads(f"{quoted} = 0")))
    except (tomllib.TOMLDecodeError, StopIteration):
        return quoted.strip("\"'")
