"""Templates and globs of the routes file: {field} templates for targets, fnmatch globs in SQL."""

from __future__ import annotations

import string


def glob_regex(glob: str) -> str:
    """An anchored POSIX regex for an fnmatch glob (to match routes in SQL)."""
    out, i = ["^"], 0
    while i < len(glob):
        ch = glob[i]
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[" and "]" in glob[i + 2 :]:
            end = glob.index("]", i + 2)
            body = glob[i + 1 : end]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append("\\" + ch if ch in ".^$+?(){}|\\[]" else ch)
        i += 1
    return "".join(out) + "$"


def template_fields(template: str, *, dotted: bool = False) -> list[str]:
    """Field names a template uses; ValueError for positional fields, formats or bad braces.

    ``dotted`` also allows ``{keys.id}``-style paths (change routes' fields).
    """
    names = []
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        head, _, rest = name.partition(".")
        bad_path = (bool(rest) and not dotted) or (dotted and name.endswith("."))
        if not head.isidentifier() or bad_path:
            raise ValueError(f"template field {{{name}}} must be a name like {{topic}}")
        if spec or conversion:
            raise ValueError(f"template field {{{name}}} may not carry a format or conversion")
        names.append(name)
    return names


def fill_known(template: str, values: dict[str, str]) -> str:
    """Fill only the fields ``values`` has; leave the others as written."""
    return string.Formatter().vformat(template, (), _Partial(values))


class _Partial(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render(template: str, values: dict[str, str]) -> str:
    """Fill a template; ValueError naming the field a result did not provide."""
    try:
        return template.format_map(values)
    except KeyError as exc:
        raise ValueError(
            f"template {template!r} needs field {exc.args[0]!r}; the result has {sorted(values)}"
        ) from None


def render_flat(template: str, values: dict[str, str]) -> str:
    """Fill a template whose fields may be dotted paths (``{keys.id}``), looked up as written;
    ValueError naming a field ``values`` lacks."""
    out = []
    for literal, name, _, _ in string.Formatter().parse(template):
        out.append(literal)
        if name is None:
            continue
        if name not in values:
            raise ValueError(f"template {template!r} needs field {name!r}, which the record lacks")
        out.append(values[name])
    return "".join(out)
