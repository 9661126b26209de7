"""variant.toml discovery and validation: the errors name the file and the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.variants import VariantError, discover, parse_variant, select

GOOD = """
title = "T"
interface = "asgi"
views = "async"
requires = ["gunicorn>=23"]
command = ["gunicorn", "benchapp.asgi:application", "--bind", "{host}:{port}"]
[postgres]
max_connections = 100
[django]
conn_max_age = 0
pool = false
"""

SHIPPED = {"sync_gunicorn", "async_uvicorn", "async_unlimited", "async_hypercorn", "async_daphne",
           "async_pooled", "async_native", "sync_gthread"}
OPT_IN = {"sync_gevent", "sync_granian", "async_granian", "async_gunicorn_asgi", "async_uvloop",
          "async_pgbouncer", "sync_gthread_pgbouncer"}


def write_variant(root: Path, name: str, text: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "variant.toml").write_text(text)
    return folder / "variant.toml"


def test_the_shipped_variants_are_discovered_and_valid() -> None:
    variants = discover()
    assert SHIPPED <= set(variants)
    by_label = {v.study_label: v for v in variants.values() if v.study_label}
    assert by_label["Sync"].interface == "wsgi" and by_label["Sync"].views == "sync"
    assert by_label["Async Limited"].max_connections == 100
    assert by_label["Async Unlimited"].max_connections == 1000
    # Pinned to asyncio + h11: uvicorn-worker's UvicornWorker picks uvloop and httptools
    # whenever they are installed, which would change the study's setup with the venv.
    assert "uvicorn_worker.UvicornH11Worker" in by_label["Async Limited"].command
    assert all((v.folder / "Dockerfile").is_file() for v in variants.values())


def test_the_opt_in_variants_stay_out_of_the_default_matrix_and_say_what_they_need() -> None:
    variants = discover()
    assert OPT_IN <= set(variants)
    default = {v.name for v in select(variants, None)}
    assert SHIPPED <= default and not OPT_IN & default
    for name in OPT_IN:
        assert variants[name].requires, f"{name} declares no packages for nox to install"


def test_no_variant_leaves_its_event_loop_to_auto() -> None:
    """What a server runs must not depend on what else the venv holds: Uvicorn's, Gunicorn's
    ASGI worker's and Granian's "auto" loops pick uvloop when it is importable."""
    for variant in discover().values():
        command = list(variant.command)
        assert "uvicorn_worker.UvicornWorker" not in command, variant.name
        if "asgi" in command and command[0].endswith("gunicorn"):
            assert command[command.index("--asgi-loop") + 1] in {"asyncio", "uvloop"}
        if command[0] == "granian" and variant.interface == "asgi":
            assert command[command.index("--loop") + 1] in {"asyncio", "uvloop"}
        if command[0] == "hypercorn":
            assert command[command.index("--worker-class") + 1] in {"asyncio", "uvloop"}


def test_the_named_uvicorn_workers_pin_loop_and_parser() -> None:
    pytest.importorskip("uvicorn_worker")
    from benchapp.uvicorn_workers import UvicornUvloopHttptoolsWorker
    from uvicorn_worker import UvicornH11Worker

    assert UvicornH11Worker.CONFIG_KWARGS == {"loop": "asyncio", "http": "h11"}
    assert UvicornUvloopHttptoolsWorker.CONFIG_KWARGS == {"loop": "uvloop", "http": "httptools"}


def test_server_command_fills_host_and_port(tmp_path: Path) -> None:
    variant = parse_variant(write_variant(tmp_path, "good", GOOD))
    command = variant.server_command("10.0.0.2", 8123)
    assert command[-1] == "10.0.0.2:8123"
    assert command[0].endswith("gunicorn")


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        (GOOD.replace('command = ["gunicorn", "benchapp.asgi:application", "--bind", '
                      '"{host}:{port}"]\n', ""), "command", "is required"),
        ("colour = 'red'\n" + GOOD, "colour", "unknown key"),
        (GOOD.replace('interface = "asgi"', 'interface = "cgi"'), "interface", "asgi, wsgi"),
        (GOOD.replace('views = "async"', 'views = 3'), "views", "must be str"),
        (GOOD.replace("max_connections = 100", "max_connections = true"),
         "postgres.max_connections", "number"),
        (GOOD.replace("max_connections = 100", "max_connections = 0"),
         "postgres.max_connections", "between"),
        (GOOD.replace("{host}:{port}", "{host}:8000"), "command", "{port}"),
        (GOOD.replace("{host}:{port}", "{host}:{prot}"), "command", "unknown placeholder"),
        (GOOD.replace('requires = ["gunicorn>=23"]', 'requires = ["gunicorn>>23"]'), "requires",
         "not a valid requirement"),
        (GOOD.replace("pool = false", "pool = { max_size = 5, colour = 1 }"), "django.pool.colour",
         "unknown key"),
        (GOOD.replace("conn_max_age = 0", "conn_max_age = 60").replace(
            "pool = false", "pool = { max_size = 5 }"), "django.conn_max_age", "must be 0"),
    ],
)
def test_a_broken_variant_names_file_and_key(tmp_path: Path, text: str, key: str,
                                             words: str) -> None:
    path = write_variant(tmp_path, "broken", text)
    with pytest.raises(VariantError) as info:
        parse_variant(path)
    message = str(info.value)
    assert str(path) in message
    assert f"key '{key}'" in message
    assert words in message


def test_bad_folder_name_is_refused(tmp_path: Path) -> None:
    path = write_variant(tmp_path, "Bad-Name", GOOD)
    with pytest.raises(VariantError, match="lowercase"):
        parse_variant(path)


def test_invalid_toml_is_reported_with_the_file(tmp_path: Path) -> None:
    path = write_variant(tmp_path, "broken", "title = \n")
    with pytest.raises(VariantError, match="not valid TOML"):
        parse_variant(path)


def test_select_lists_the_valid_names() -> None:
    variants = discover()
    with pytest.raises(VariantError, match="valid: .*sync_gunicorn"):
        select(variants, ["nope"])
    assert [v.name for v in select(variants, ["sync_gunicorn"])] == ["sync_gunicorn"]


def test_default_run_false_leaves_a_variant_out_of_the_default_matrix(tmp_path: Path) -> None:
    write_variant(tmp_path, "in_default", GOOD)
    write_variant(tmp_path, "opt_in", "default_run = false\n" + GOOD)
    variants = discover(tmp_path)
    assert [v.name for v in select(variants, None)] == ["in_default"]
    assert [v.name for v in select(variants, ["all"])] == ["in_default", "opt_in"]
    assert [v.name for v in select(variants, ["opt_in"])] == ["opt_in"]
    with pytest.raises(VariantError, match="default_run.*must be bool"):
        parse_variant(write_variant(tmp_path, "bad", 'default_run = "no"\n' + GOOD))


def test_pool_settings_and_sweep_overrides(tmp_path: Path) -> None:
    text = GOOD.replace("pool = false", "pool = { min_size = 4, max_size = 20, timeout = 5 }")
    variant = parse_variant(write_variant(tmp_path, "pooled", text))
    assert variant.app_env()["DB_POOL"] == '{"min_size": 4, "max_size": 20, "timeout": 5.0}'
    swept = variant.with_overrides(max_connections=1000, pool_max_size=2)
    assert swept.max_connections == 1000
    assert swept.pool is not None and (swept.pool.max_size, swept.pool.min_size) == (2, 2)
    assert variant.max_connections == 100  # the original is unchanged


def run_cli(*args: str, servers: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = None
    if servers is not None:
        import os

        env = dict(os.environ, BENCH_SERVERS_DIR=str(servers))
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def test_cli_lists_variants() -> None:
    result = run_cli("variants")
    assert result.returncode == 0, result.stderr
    # Each line: a mark ("-": not in the default matrix, else blank), name, interface, views.
    marks = {line[2:].split()[0]: line[0] for line in result.stdout.splitlines()}
    assert SHIPPED <= set(marks)
    assert marks["async_pgbouncer"] == "-" and marks["sync_gunicorn"] == " "
    assert any(line[2:].split()[1:3] == ["wsgi", "sync"] for line in result.stdout.splitlines())


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda t: t.replace('command = ["gunicorn", "benchapp.asgi:application", "--bind", '
                             '"{host}:{port}"]\n', ""), "command"),
        (lambda t: "colour = 'red'\n" + t, "colour"),
        (lambda t: t.replace('interface = "asgi"', 'interface = "cgi"'), "interface"),
    ],
)
def test_cli_broken_variant_is_one_line_exit_2(tmp_path: Path, edit, key: str) -> None:
    path = write_variant(tmp_path, "broken", edit(GOOD))
    result = run_cli("variants", servers=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and f"'{key}'" in lines[0]
    assert "Traceback" not in result.stderr
