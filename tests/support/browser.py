"""Headless Chromium (Debian's package) driven by Playwright, for what browsers do."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from playwright.async_api import Browser, async_playwright
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from orchestrator.stack.servers import serving

CHROMIUM = "/usr/bin/chromium"
# No sandbox as root (CI), and nothing that reaches beyond loopback.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        raise RuntimeError(f"{CHROMIUM} is missing: run the tests with `make test`")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            await browser.close()


@asynccontextmanager
async def blank_page_server() -> AsyncIterator[str]:
    """An empty page on its own loopback origin; returns its URL."""

    async def page(_request: object) -> HTMLResponse:
        return HTMLResponse("<!doctype html><meta charset=utf-8><title>page</title>")

    async with serving(Starlette(routes=[Route("/", page)])) as url:
        yield url
