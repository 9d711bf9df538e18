"""Message templates: one file per message with a section per channel, rendered with Jinja2.

A template file (`templates/<name>.yaml`) holds the content of one message for each
channel it can go out on, so a send with a fallback list (`channels: [push, email]`)
uses the section of whichever channel is chosen:

    email: {subject: "...", html: "...", text: "..."}
    push: {title: "...", body: "..."}

Every string is a Jinja2 template rendered in a sandbox over `user`, `event`,
`journey` and, when the send step asks for ranked content, `recommendations` (a list
of catalogue items). A missing attribute renders as an empty string. The sandbox is
the conditions' bounded one (`rules.sandbox.BoundedEnvironment`): nothing in it
changes the data it is given, no field renders to more than `TEMPLATE_LIMITS`
characters and no value made on the way is larger; `TEMPLATE_FILTERS` and the globals
`range`, `cycler` and `joiner` are what a template can use.

Each section declares its channel's limits (as apprise plugins do): the most
characters a field may render to and, for push, the payload size. Deploy checks the
rendering of the sample profile against them; at send time one-line fields are
flattened (no header injection from user data), over-long text is cut with an
ellipsis, and a push payload that is still too large fails the message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import timedelta
from functools import lru_cache
from typing import Any, ClassVar

from jinja2 import ChainableUndefined, TemplateError, TemplateSyntaxError
from jinja2 import Template as Template_
from jinja2.sandbox import safe_range
from jinja2.utils import Cycler, Joiner
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rules.durations import Duration
from rules.expressions import CONDITION_FILTERS
from rules.sandbox import BoundedEnvironment, Limits


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # The most characters each field may render to.
    LIMITS: ClassVar[Mapping[str, int]] = {}
    # Fields that must render to one line (mail headers, notification titles).
    ONE_LINE: ClassVar[frozenset[str]] = frozenset()
    # Fields that must render to an absolute URL (or a deep link for push).
    URLS: ClassVar[frozenset[str]] = frozenset()
    MAX_PAYLOAD_BYTES: ClassVar[int | None] = None


class EmailContent(Section):
    LIMITS = {"subject": 200, "preheader": 150, "from_name": 64, "reply_to": 254}
    ONE_LINE = frozenset({"subject", "preheader", "from_name", "reply_to"})

    subject: str = Field(min_length=1)
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
    # What iOS and Android show before cutting; APNs refuses payloads over 4 KB.
    LIMITS = {"title": 65, "body": 240}
    ONE_LINE = frozenset({"title"})
    URLS = frozenset({"deep_link", "image"})
    MAX_PAYLOAD_BYTES = 4096

    title: str = Field(min_length=1)
    body: str = Field(min_length=1)
    deep_link: str | None = None
    image: str | None = None
    data: dict[str, str] = Field(default_factory=dict)


class InAppContent(Section):
    LIMITS = {"title": 80, "body": 1000, "cta_label": 25}
    ONE_LINE = frozenset({"title", "cta_label"})
    URLS = frozenset({"cta_url", "image"})

    title: str = Field(min_length=1)
    body: str = Field(min_length=1)
    image: str | None = None
    cta_label: str | None = None
    cta_url: str | None = None
    expires_after: Duration = Field(
        default=timedelta(days=30), description="How long the message stays in the inbox"
    )


class WebContent(Section):
    LIMITS = {"title": 120, "body": 2000, "cta_label": 25}
    ONE_LINE = frozenset({"title", "cta_label"})
    URLS = frozenset({"url", "image"})

    placement: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="e.g. home_hero")
    title: str | None = None
    body: str = Field(min_length=1)
    image: str | None = None
    url: str | None = None
    cta_label: str | None = None
    expires_after: Duration = Field(
        default=timedelta(days=7), description="How long the placement shows the message"
    )


SECTIONS: Mapping[str, type[Section]] = {
    "email": EmailContent,
    "push": PushContent,
    "in_app": InAppContent,
    "web": WebContent,
}
# Fields that configure the message rather than being rendered.
SETTINGS = frozenset({"expires_after", "placement"})


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
        return section.model_dump(mode="json", exclude_none=True)  # type: ignore[no-any-return]


# A rendered field, an HTML email included, and every value made on the way: generous
# (Gmail clips an email at about 100 KB) but finite, whatever the user data.
TEMPLATE_LIMITS = Limits(max_length=1_000_000, max_int_bits=256)
# The conditions' filters and those that lay out text and HTML; those that could multiply
# a size (center, indent, wordwrap, format, batch, slice...) check it first.
TEMPLATE_FILTERS = CONDITION_FILTERS | {
    "attr", "batch", "center", "dictsort", "e", "escape", "filesizeformat", "forceescape",
    "format", "groupby", "indent", "safe", "slice", "striptags", "tojson", "urlencode",
    "wordwrap",
}  # fmt: skip
# Not lipsum (its size is an argument), nor dict and namespace (they nest a value in
# another without a literal the sandbox checks).
_GLOBALS = {"range": safe_range, "cycler": Cycler, "joiner": Joiner}
_TEXT = BoundedEnvironment(TEMPLATE_LIMITS, filters=TEMPLATE_FILTERS, globals=_GLOBALS,
                           undefined=ChainableUndefined, autoescape=False)  # fmt: skip
_HTML = BoundedEnvironment(TEMPLATE_LIMITS, filters=TEMPLATE_FILTERS, globals=_GLOBALS,
                           undefined=ChainableUndefined, autoescape=True)  # fmt: skip
_HTML_FIELDS = frozenset({"html"})


class RenderError(Exception):
    """A template could not be rendered; `field` names the failing field."""

    def __init__(self, field: str, message: str, line: int | None = None) -> None:
        self.field, self.reason, self.line = field, message, line
        super().__init__(f"{field}: {message}")


@lru_cache(maxsize=4096)
def _compiled(source: str, html: bool) -> Template_:
    """Compiling is most of the cost of rendering; the same template text is sent to
    many users, so each is compiled once per process."""
    return (_HTML if html else _TEXT).from_string(source)


def check_syntax(fields: Mapping[str, Any]) -> list[RenderError]:
    """Every field that does not compile (a filter templates do not offer included), with
    the line inside the field."""
    errors = []
    for path, text in _strings(fields):
        try:
            _compiled(text, path[-1] in _HTML_FIELDS)
        except TemplateSyntaxError as exc:
            errors.append(RenderError(".".join(path), exc.message or "syntax error", exc.lineno))
    return errors


def render(fields: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """Render every string in a section (nested mappings too); raise RenderError on failure."""
    rendered: dict[str, Any] = _render(fields, context, ())
    return rendered


def render_section(fields: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """Render a channel section: its settings (`expires_after`, `placement`) stay as given."""
    return {k: v if k in SETTINGS else _render(v, context, (k,)) for k, v in fields.items()}


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$", re.IGNORECASE)


def limit_problems(channel: str, rendered: Mapping[str, Any]) -> list[RenderError]:
    """Every way a rendered section breaks its channel's limits (checked at deploy)."""
    section = SECTIONS[channel]
    problems = []
    for name, value in rendered.items():
        if not isinstance(value, str):
            continue
        limit = section.LIMITS.get(name)
        if limit is not None and len(value) > limit:
            problems.append(
                RenderError(name, f"renders to {len(value)} characters; {channel} allows {limit}")
            )
        if name in section.ONE_LINE and "\n" in value.strip():
            problems.append(RenderError(name, "must render to a single line"))
        if name in section.URLS and value and not _URL.match(value):
            problems.append(RenderError(name, f"must render to an absolute URL, not {value!r}"))
        if name == "reply_to" and value and not _EMAIL.match(value):
            problems.append(RenderError(name, f"must render to an email address, not {value!r}"))
    size = _payload_bytes(rendered)
    if section.MAX_PAYLOAD_BYTES is not None and size > section.MAX_PAYLOAD_BYTES:
        problems.append(
            RenderError(
                "data", f"the payload is {size} bytes; {channel} allows {section.MAX_PAYLOAD_BYTES}"
            )
        )
    return problems


def fit(channel: str, rendered: Mapping[str, Any]) -> dict[str, Any]:
    """A rendered section made to fit its channel at send time: one-line fields
    flattened, over-long text cut with an ellipsis; raises RenderError when the push
    payload is still over the limit (user data cannot always be checked at deploy)."""
    section = SECTIONS[channel]
    fitted = dict(rendered)
    for name, value in rendered.items():
        if not isinstance(value, str):
            continue
        if name in section.ONE_LINE:
            value = " ".join(value.split())
        limit = section.LIMITS.get(name)
        if limit is not None and len(value) > limit:
            value = value[: limit - 1].rstrip() + "…"
        fitted[name] = value
    size = _payload_bytes(fitted)
    if section.MAX_PAYLOAD_BYTES is not None and size > section.MAX_PAYLOAD_BYTES:
        raise RenderError(
            "data", f"the payload is {size} bytes; {channel} allows {section.MAX_PAYLOAD_BYTES}"
        )
    return fitted


def _payload_bytes(rendered: Mapping[str, Any]) -> int:
    return len(json.dumps(rendered, ensure_ascii=False, separators=(",", ":")).encode())


def _render(value: Any, context: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        try:
            template = _compiled(value, bool(path) and path[-1] in _HTML_FIELDS)
            return template.render(context)
        except TemplateError as exc:
            line = getattr(exc, "lineno", None) or _template_line(exc)
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
