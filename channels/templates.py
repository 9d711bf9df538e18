"""Message templates: one file per message with a section per channel, rendered with Jinja2.

A template file (`templates/<name>.yaml`) holds the content of one message for each
channel it can go out on, so a send with a fallback list (`channels: [push, email]`)
uses the section of whichever channel is chosen:

    email: {subject: "...", html: "...", text: "..."}
    push: {title: "...", body: "..."}

Every string is a Jinja2 template rendered in a sandbox over `user`, `event` and
`journey`. A missing attribute renders as an empty string.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jinja2 import ChainableUndefined, TemplateError, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EmailContent(Section):
    subject: str = Field(min_length=1, max_length=998)
    preheader: str = ""
    html: str | None = None
    text: str | None = None
    from_name: str | None = None
    reply_to: str | None = None

    @model_validator(mode="after")
    def _body(self) -> EmailContent:
        if self.html is None and self.text is None:
            raise ValueError("an email needs `html`, `text` or both")
        return self


class PushContent(Section):
    title: str = Field(min_length=1)
    body: str = Field(min_length=1)
    deep_link: str | None = None
    image: str | None = None
    data: dict[str, str] = Field(default_factory=dict)


class InAppContent(Section):
    title: str = Field(min_length=1)
    body: str = Field(min_length=1)
    cta_label: str | None = None
    cta_url: str | None = None


class WebContent(Section):
    placement: str = Field(min_length=1)
    title: str | None = None
    body: str = Field(min_length=1)
    image: str | None = None
    url: str | None = None


class Template(Section):
    """A message template: content for at least one channel."""

    email: EmailContent | None = None
    push: PushContent | None = None
    in_app: InAppContent | None = None
    web: WebContent | None = None

    @model_validator(mode="after")
    def _some_channel(self) -> Template:
        if not self.channels():
            raise ValueError("a template needs a section for at least one channel")
        return self

    def channels(self) -> list[str]:
        return [name for name in ("email", "push", "in_app", "web") if getattr(self, name)]

    def fields(self, channel: str) -> dict[str, Any]:
        """The raw (unrendered) fields of one channel's section."""
        section = getattr(self, channel)
        if section is None:
            raise KeyError(f"the template has no {channel} section")
        return section.model_dump(exclude_none=True)  # type: ignore[no-any-return]


_TEXT = SandboxedEnvironment(undefined=ChainableUndefined, autoescape=False)
_HTML = SandboxedEnvironment(undefined=ChainableUndefined, autoescape=True)
_HTML_FIELDS = frozenset({"html"})


class RenderError(Exception):
    """A template could not be rendered; `field` names the failing field."""

    def __init__(self, field: str, message: str, line: int | None = None) -> None:
        self.field, self.reason, self.line = field, message, line
        super().__init__(f"{field}: {message}")


def _environment(field: str) -> SandboxedEnvironment:
    return _HTML if field in _HTML_FIELDS else _TEXT


def check_syntax(fields: Mapping[str, Any]) -> list[RenderError]:
    """Every field that does not compile, with the line inside the field."""
    errors = []
    for path, text in _strings(fields):
        try:
            _environment(path[-1]).parse(text)
        except TemplateSyntaxError as exc:
            errors.append(RenderError(".".join(path), exc.message or "syntax error", exc.lineno))
    return errors


def render(fields: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """Render every string in a section (nested mappings too); raise RenderError on failure."""
    rendered: dict[str, Any] = _render(fields, context, ())
    return rendered


def _render(value: Any, context: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        try:
            template = _environment(path[-1] if path else "").from_string(value)
            return template.render(context)
        except TemplateError as exc:
            line = getattr(exc, "lineno", None)
            raise RenderError(".".join(path), exc.message or type(exc).__name__, line) from None
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            raise RenderError(".".join(path), message, _template_line(exc)) from None
    if isinstance(value, Mapping):
        return {k: _render(v, context, (*path, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, context, (*path, str(i))) for i, v in enumerate(value)]
    return value


def _template_line(exc: BaseException) -> int | None:
    """The template line a render error happened on (Jinja2 marks it in the traceback)."""
    line, tb = None, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _strings(value: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, Mapping):
        return [s for k, v in value.items() for s in _strings(v, (*path, str(k)))]
    if isinstance(value, list):
        return [s for i, v in enumerate(value) for s in _strings(v, (*path, str(i)))]
    return []
