"""report.html and report.md from the report's content, compare.html and compare.md from a
comparison's, with jinja2.

report.html autoescapes every value and embeds every figure as a data: URI, so it opens
from disk with no network. report.md escapes the characters Markdown reads as markup and
refers to figures/NAME.png.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from bench.report.compare_content import CompareReport
from bench.report.content import Report

TEMPLATES = Path(__file__).parent / "templates"
_MD_SPECIAL = re.compile(r"([\\`*\[\]|])")
_ENTITY = re.compile(r"&(?=#?\w+;)")


def markdown_escape(value: Any) -> str:
    """Text as Markdown shows it literally; one line (tables cannot hold a newline)."""
    if value is None:
        return ""
    if isinstance(value, markupsafe.Markup):  # a macro's output, marked |safe
        return str(value)
    text = str(value)
    text = _MD_SPECIAL.sub(r"\\\1", text)
    text = _ENTITY.sub("&amp;", text)
    text = text.replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(text.split()) if "\n" in text else text


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _loader() -> jinja2.FileSystemLoader:
    return jinja2.FileSystemLoader(str(TEMPLATES))


def _html_environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=_loader(), autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["data_uri"] = data_uri
    return env


def _markdown_environment() -> jinja2.Environment:
    # Markdown: not HTML-autoescaped; finalize escapes every value instead.
    return jinja2.Environment(
        loader=_loader(), autoescape=False, undefined=jinja2.StrictUndefined,  # noqa: S701
        finalize=markdown_escape, trim_blocks=True, lstrip_blocks=True)


def render_html(report: Report) -> str:
    return _html_environment().get_template("report.html.j2").render(r=report)


def render_markdown(report: Report) -> str:
    return _markdown_environment().get_template("report.md.j2").render(r=report)


def render_compare_html(report: CompareReport) -> str:
    return _html_environment().get_template("compare.html.j2").render(r=report)


def render_compare_markdown(report: CompareReport) -> str:
    return _markdown_environment().get_template("compare.md.j2").render(r=report)
