"""The routes file: parsing, matching, templates, and errors naming the file, line and problem."""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.errors import RoutesError
from pipeline.workflows.routes import (
    CacheTarget,
    PublishTarget,
    load_routes,
    parse_routes,
    routes_for,
)
from pipeline.workflows.templates import glob_regex, render

PATH = Path("routes.toml")
GOOD = """
# comment
[[routes]]
name = "uppercase"
cache = "demo"
topic = "topic 1"
workflow = "tasks.examples:uppercase"
ordered = true
publish = { cache = "{cache}", topic = "topic 2" }

[[routes]]
name = "weather"
cache = "weather"
topic = "obs-*"
workflow = "tasks.examples:weather"
publish = { cache = "{cache}", topic = "{topic}-changes" }
cache_set = { cache = "{cache}", key = "latest:{location}", ttl_seconds = 600 }
"""


def route_block(**fields: object) -> str:
    base: dict[str, object] = {
        "name": '"r"',
        "cache": '"c"',
        "topic": '"t"',
        "workflow": '"tasks.examples:uppercase"',
    }
    base |= fields
    body = "\n".join(f"{key} = {value}" for key, value in base.items() if value is not None)
    return f"[[routes]]\n{body}\n"


def error_of(text: str, resolve: bool = False) -> str:
    with pytest.raises(RoutesError) as caught:
        parse_routes(text, PATH, resolve=resolve)
    return str(caught.value)


def test_a_valid_file_parses_into_routes_in_file_order_with_their_lines() -> None:
    table = parse_routes(GOOD, PATH)
    assert [r.name for r in table] == ["uppercase", "weather"]
    first, second = table.routes
    assert (first.line, second.line) == (3, 11)
    assert first.ordered
    assert not second.ordered
    assert first.publish == PublishTarget("{cache}", "topic 2")
    assert second.cache_set == CacheTarget("{cache}", "latest:{location}", 600)
    assert table.get("weather") is second


def test_routes_match_cache_and_topic_globs_and_all_matching_routes_run() -> None:
    also = route_block(name='"audit"', cache='"*"', topic='"topic ?"')
    table = parse_routes(GOOD + also, PATH)
    assert [r.name for r in table.matching("demo", "topic 1")] == ["uppercase", "audit"]
    assert [r.name for r in table.matching("weather", "obs-paris")] == ["weather"]
    assert table.matching("weather", "paris-obs") == ()
    assert [r.name for r in table.matching("other", "topic 9")] == ["audit"]


def test_targets_fill_cache_and_topic_where_the_route_names_them_exactly() -> None:
    table = parse_routes(GOOD, PATH)
    assert table.get("uppercase").targets() == [PublishTarget("demo", "topic 2")]
    weather = table.get("weather").targets()
    assert weather == [
        PublishTarget("weather", "{topic}-changes"),  # topic is a glob: left as written
        CacheTarget("weather", "latest:{location}", 600),
    ]


def test_render_fills_templates_and_names_a_missing_field() -> None:
    assert render("{topic}-moderated", {"topic": "room-1"}) == "room-1-moderated"
    with pytest.raises(ValueError, match="needs field 'location'"):
        render("latest:{location}", {"cache": "c", "topic": "t"})


def test_invalid_toml_names_the_file_line_and_column() -> None:
    message = error_of('[[routes]]\nname = "x"\ncache = \n')
    assert message.startswith("routes.toml:3:")
    assert "not valid TOML" in message


def test_every_semantic_problem_is_reported_with_its_own_line() -> None:
    text = (
        route_block(name='"ok"')
        + "\n"
        + route_block(name='"bad"', cache=None, ordered='"yes"', colour='"red"')
    )
    message = error_of(text)
    lines = message.splitlines()
    assert any(
        line.startswith("routes.toml:7:") and "cache must be a non-empty string" in line
        for line in lines
    ), message
    assert any(
        line.startswith("routes.toml:11:") and "ordered must be true or false" in line
        for line in lines
    ), message
    assert any(
        line.startswith("routes.toml:12:") and "unknown key 'colour'" in line for line in lines
    ), message
    assert all("route 'bad'" in line for line in lines)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"workflow": '"no-colon"'}, "workflow must be 'module:attribute'"),
        ({"name": '"has space"'}, "name must match"),
        ({"publish": '{ cache = "c" }'}, "publish.topic must be a non-empty string"),
        ({"publish": '{ cache = "c", topic = "{0}" }'}, "must be a name like {topic}"),
        ({"publish": '{ cache = "c", topic = "{topic!r}" }'}, "may not carry a format"),
        ({"publish": '{ cache = "c", topic = "t", extra = 1 }'}, "unknown key 'extra'"),
        ({"cache_set": '{ cache = "c", key = "k" }'}, "ttl_seconds must be an integer in 1..86400"),
        ({"cache_set": '{ cache = "c", key = "k", ttl_seconds = 0 }'}, "1..86400, got 0"),
        ({"cache_set": '"k"'}, "cache_set must be a table"),
    ],
)
def test_bad_route_fields_are_refused_with_the_reason(
    fields: dict[str, object], expected: str
) -> None:
    message = error_of(route_block(**fields))
    assert message.startswith("routes.toml:")
    assert expected in message


def test_duplicate_names_and_unknown_top_level_keys_are_refused() -> None:
    assert "route name 'r' is used twice" in error_of(route_block() + route_block())
    assert "unknown top-level key(s) ['route']" in error_of("[[route]]\nname = 'x'\n")


def test_workflows_are_imported_at_load_and_an_unusable_one_is_named() -> None:
    missing = error_of(route_block(workflow='"tasks.no_such_module:run"'), resolve=True)
    assert "tasks.no_such_module:run" in missing
    assert "cannot be used" in missing
    absent = error_of(route_block(workflow='"tasks.examples:nothing_here"'), resolve=True)
    assert "has no attribute 'nothing_here'" in absent
    not_callable = error_of(route_block(workflow='"tasks.examples:BANNED_WORDS"'), resolve=True)
    assert "must be a Celery task or a function" in not_callable
    assert len(parse_routes(route_block(), PATH, resolve=True)) == 1


def test_a_missing_default_file_means_no_routes_but_an_explicit_one_must_exist(
    tmp_path: Path,
) -> None:
    absent = tmp_path / "routes.toml"
    assert len(load_routes(absent, required=False)) == 0
    with pytest.raises(RoutesError, match="routes file not found"):
        load_routes(absent, required=True)
    with pytest.raises(RoutesError, match="routes file not found"):
        routes_for(Settings(pipeline_routes=tmp_path / "explicit.toml"))


@pytest.mark.parametrize(
    "glob", ["room-*", "topic 1", "a?c", "[ab]x", "[!ab]x", "a.b+c(d)", "*", "x[y"]
)
def test_glob_regex_matches_what_fnmatch_matches(glob: str) -> None:
    pattern = re.compile(glob_regex(glob))
    for name in [
        "room-1",
        "room-",
        "topic 1",
        "abc",
        "axc",
        "ax",
        "bx",
        "cx",
        "a.b+c(d)",
        "x[y",
        "",
    ]:
        assert bool(pattern.match(name)) == fnmatchcase(name, glob), (glob, name)
