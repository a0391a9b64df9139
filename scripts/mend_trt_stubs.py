#!/usr/bin/env python3
"""Unpack tensorrt-stubs and mend what keeps mypy from reading them.

    python scripts/mend_trt_stubs.py tensorrt_stubs-*.whl OUT_DIR

The shipped ``tensorrt_bindings/tensorrt.pyi`` has parameters named ``in`` (a keyword) and
parameters without a default after ones with a default; both are syntax errors.  Each bad
``def`` line is rewritten (``in`` -> ``in_``, later parameters get ``= ...``) until the file
parses; ``py.typed`` markers are added so mypy uses the stubs.
"""

from __future__ import annotations

import ast
import re
import sys
import zipfile
from pathlib import Path


def _mend_def(line: str) -> str:
    line = re.sub(r"([(,]\s*)in(\s*:)", r"\1in_\2", line)
    head, sep, rest = line.partition("(")
    params, close, tail = rest.rpartition(")")
    parts = [p for p in params.split(", ")]
    seen_default = False
    for i, part in enumerate(parts):
        if "=" in part:
            seen_default = True
        elif seen_default and part.strip() and not part.strip().startswith("*"):
            parts[i] = part + " = ..."
    return head + sep + ", ".join(parts) + close + tail


def mend(text: str) -> str:
    lines = text.splitlines()
    for _ in range(500):
        try:
            ast.parse("\n".join(lines))
            return "\n".join(lines) + "\n"
        except SyntaxError as exc:
            index = (exc.lineno or 1) - 1
            fixed = _mend_def(lines[index])
            if fixed == lines[index]:
                raise
            lines[index] = fixed
    raise RuntimeError("too many syntax errors to mend")


def main() -> None:
    wheel, out = Path(sys.argv[1]), Path(sys.argv[2])
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.endswith(".pyi"):
                target = out / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(mend(zf.read(name).decode()))
                (target.parent / "py.typed").write_text("partial\n")


if __name__ == "__main__":
    main()
