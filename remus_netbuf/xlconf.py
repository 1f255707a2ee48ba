"""xl's host configuration, ``/etc/xen/xl.conf``: which netbuf script ``xl remus`` runs, and the
one-line edit ``make install`` makes there to point it at ours.

Plain functions over the file's text (no I/O, standard library only: the installer runs them with
the system python3 before any venv exists). xl reads ``remus.default.netbufscript`` through
libxlu, where the last setting of a key wins and ``+=`` appends to a string; when it is unset,
libxl runs ``/etc/xen/scripts/remus-netbuf-setup`` (``xl remus -N`` overrides both).

The edit marks what it changed with a comment line (:data:`MARK`) right above the setting, the
replaced line kept verbatim in it, so that :func:`restore` can put the file back from the file
alone, and an admin reading xl.conf sees what was done and why.
"""

from __future__ import annotations

from dataclasses import dataclass

XL_CONF = "/etc/xen/xl.conf"
KEY = "remus.default.netbufscript"
XEN_DEFAULT_SCRIPT = "/etc/xen/scripts/remus-netbuf-setup"  # libxl: XEN_SCRIPT_DIR/...
MARK = "# remus-netbuf:"
ADDED = f"{MARK} added by make install (make uninstall removes it)"
REPLACED = f"{MARK} make install replaced this line (make uninstall puts it back): "
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


@dataclass(frozen=True)
class Statement:
    """One ``key = value`` or ``key += value`` of the file; value None when not a string."""

    line: int  # 0-based index into text.splitlines()
    key: str
    append: bool
    value: str | None
    alone: bool  # the only statement on its line (a line we may replace)


def statements(text: str) -> list[Statement]:
    """The file's settings, in order; lists, numbers and anything unparsed count as non-strings."""
    found = []
    for number, line in enumerate(_lines(text)[0]):
        parts = _split(line)
        for part in parts:
            key, op, value = _assignment(part)
            if key:
                found.append(Statement(number, key, op == "+=", value, len(parts) == 1))
    return found


def netbufscript(text: str) -> str | None:
    """The script ``xl remus`` runs per this xl.conf, or None when it leaves the default."""
    value: str | None = None
    for st in statements(text):
        if st.key == KEY:
            value = (value or "") + (st.value or "") if st.append else st.value
    return value


def script_xl_runs(text: str | None) -> str:
    """The netbuf script xl runs without ``-N`` (``text`` None: there is no xl.conf)."""
    return (netbufscript(text) if text is not None else None) or XEN_DEFAULT_SCRIPT


def point_at(text: str, script: str) -> str:
    """``text`` with remus.default.netbufscript set to ``script``, marked for :func:`restore`.

    Idempotent: a file that already runs ``script`` is returned as it is. The effective (last)
    setting is replaced in place, the old line kept in the mark above it; without one, two lines
    are appended. Raises ValueError for a setting we cannot replace alone (``+=``, or sharing its
    line with other settings): the admin edits that by hand.
    """
    lines, eol = _lines(text)
    ours = _setting(script)
    marked = _marked(lines)
    if marked is not None:
        if lines[marked + 1] == ours:
            return text
        lines[marked + 1] = ours
        return _join(lines, eol)
    if netbufscript(text) == script:
        return text
    settings = [st for st in statements(text) if st.key == KEY]
    if any(st.append or not st.alone for st in settings):
        where = ", ".join(str(st.line + 1) for st in settings if st.append or not st.alone)
        raise ValueError(f"{KEY} on line {where} is not a plain setting alone on its line")
    if settings:
        last = settings[-1].line
        lines[last : last + 1] = [REPLACED + lines[last], ours]
        return _join(lines, eol)
    return _join([*lines, ADDED, ours], eol or not text)


def restore(text: str, script: str) -> tuple[str, str]:
    """Undo :func:`point_at`: (the text, what was done). A marked setting the admin has changed
    since is kept (only our mark goes); unmarked settings are never touched."""
    lines, eol = _lines(text)
    marked = _marked(lines)
    if marked is None:
        return text, f"no {KEY} set by make install: left alone"
    mark, line = lines[marked], lines[marked + 1]
    if _assignment(line) != (KEY, "=", script):
        del lines[marked]
        return _join(lines, eol), f"{KEY} was changed since make install: kept {line.strip()!r}"
    if mark.startswith(REPLACED):
        lines[marked : marked + 2] = [mark.removeprefix(REPLACED)]
        return _join(lines, eol), f"restored {lines[marked].strip()!r}"
    del lines[marked : marked + 2]
    return _join(lines, eol), f"removed {KEY} (it was not set before)"


def _setting(script: str) -> str:
    return f'{KEY}="{script}"'


def _marked(lines: list[str]) -> int | None:
    """Index of our mark line, when the line after it is a setting of KEY."""
    for i, line in enumerate(lines[:-1]):
        if line.startswith(MARK) and _assignment(lines[i + 1])[0] == KEY:
            return i
    return None


def _lines(text: str) -> tuple[list[str], bool]:
    """The lines of ``text`` exactly (no other line ends than newline), and whether the last one
    ends with a newline: ``_join`` gives the same text back."""
    eol = text.endswith("\n")
    body = text[:-1] if eol else text
    return (body.split("\n") if text else []), eol


def _join(lines: list[str], eol: bool) -> str:
    return "\n".join(lines) + ("\n" if eol and lines else "")


def _split(line: str) -> list[str]:
    """The statements of one line: split at ``;`` and cut at ``#``, neither inside quotes."""
    parts: list[str] = []
    current: list[str] = []
    quote, escaped = "", False
    for char in line:
        if escaped:
            escaped = False
        elif quote and char == "\\":
            escaped = True
        elif quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#":
            break
        elif char == ";":
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


def _assignment(statement: str) -> tuple[str, str, str | None]:
    """(key, ``=`` or ``+=``, string value or None) of ``key = value``; ("", "", None) if not."""
    parts = _split(statement)
    statement = parts[0] if parts else ""
    key, op, rest = "", "", ""
    for candidate in ("+=", "="):
        head, sep, tail = statement.partition(candidate)
        if sep and head.strip() and all(c.isalnum() or c in "._" for c in head.strip()):
            key, op, rest = head.strip(), candidate, tail.strip()
            break
    if not key:
        return "", "", None
    return key, op, _string(rest)


def _string(value: str) -> str | None:
    """The text of a quoted string, escapes as libxlu reads them; None if not one string."""
    if len(value) < 2 or value[0] not in "'\"" or value[-1] != value[0]:
        return None
    out, chars = [], iter(value[1:-1])
    for char in chars:
        if char == "\\":
            nxt = next(chars, "")
            out.append(_ESCAPES.get(nxt, nxt))
        elif char == value[0]:
            return None  # two strings, or garbage after the first
        else:
            out.append(char)
    return "".join(out)
