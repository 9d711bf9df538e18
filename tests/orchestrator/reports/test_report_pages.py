"""The report pages in a real browser: the numbers a marketer reads are the JSON API's,
the charts are there, empty journeys render, and only a reports key opens them."""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page
from temporalio.testing import WorkflowEnvironment

from orchestrator.reports import charts, formats
from orchestrator.reports.estimates import ArmTotals, Estimate
from orchestrator.reports.service import ExperimentResult
from orchestrator.reports.statistics import analyse
from orchestrator.reports.views import experiment_view
from tests.conftest import StackFactory
from tests.orchestrator.reports.test_alerts import skew
from tests.orchestrator.reports.test_journey_reports import OFFER, USERS, arm_of
from tests.support.browser import chromium
from tests.support.clock import ManualClock
from tests.support.stack import Stack
from tests.support.workspace import ARBITRATE_ONLY_KEY, SERVER_KEY, WRITE_KEY, user_token

QUIET = """
journey: quiet
name: 'Quiet <b>launch</b> & "friends"'
category: promotional
trigger: {event: Never Happens}
holdout: 10
start: split
steps:
  split:
    experiment:
      key: quiet_test
      variants:
        - {name: control, weight: 1, next: done}
        - {name: bold, weight: 1, next: done}
  done:
    exit: {}
"""
VIEWPORT = {"width": 1100, "height": 1400}
DAYS = 8


def rate(value: float | None) -> str:
    """As `orchestrator report` prints a rate."""
    return "-" if value is None else f"{100 * value:.1f}%"


def points(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}"


def expected_verdict(lift: dict[str, Any]) -> str:
    """The always-valid interval decides; a one-look p below 0.05 alone only promises."""
    if lift["sequential"]["significant"]:
        return "better" if lift["sequential"]["difference"]["value"] > 0 else "worse"
    return "promising" if lift["significant"] else "inconclusive"


def basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def text(page: Page, selector: str) -> str:
    return (await page.locator(selector).inner_text()).strip()


async def browser_page(browser: Browser) -> Page:
    """A page whose browser answers the Basic challenge as a marketer would."""
    context = await browser.new_context(
        http_credentials={"username": "marketer", "password": SERVER_KEY}, viewport=VIEWPORT
    )
    return await context.new_page()


@pytest.fixture
async def stack(make_stack: StackFactory, time_skipping: WorkflowEnvironment) -> Stack:
    """The offer journey of the JSON reports' tests, its users arriving over DAYS days
    (buyers half a day after they enter), beside a journey nobody enters. The API's
    clock and the workflows' (the time-skipping server's) move on a day at a time."""
    clock = ManualClock()
    stack = await make_stack(
        {"offer": OFFER, "quiet": QUIET}, workspace={"config": "global_control: 20\n"}, clock=clock
    )
    for day in range(DAYS):
        batch = list(enumerate(USERS))[day::DAYS]
        for _, user in batch:
            await stack.track(user, "Browsed")
        for _, user in batch:
            if arm_of(user) != "held out":
                await stack.result("offer", user)
        clock.advance(timedelta(hours=12))
        for n, user in batch:
            if arm_of(user) == "discount" or n % 3 == 0:
                await stack.track(user, "Order Completed", {"revenue": 10 + 10 * (n % 2)})
        clock.advance(timedelta(hours=12))
        await time_skipping.sleep(timedelta(days=1))
    return stack


async def test_the_pages_show_the_reports_numbers(stack: Stack, tmp_path: Path) -> None:
    async def api(path: str) -> Any:
        response = await stack.call("GET", f"/v1/reports/{path}")
        assert response.status_code == 200, response.text
        return response.json()

    workspace = await api("workspace")
    journey = await api("journeys/offer")
    experiment = await api("journeys/offer/experiments/discount_test")
    async with chromium() as browser:
        page = await browser_page(browser)
        errors: list[str] = []  # a style the Content-Security-Policy blocked would be one
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        # the index: the global control group's result and every journey
        response = await page.goto(f"{stack.api_url}/reports/")
        assert response is not None
        assert response.status == 200
        control = workspace["global_control"]
        srm = control["analysis"]["sample_ratio"]
        state = await page.get_attribute("#global-control #sample-ratio", "data-state")
        assert state == ("mismatch" if srm["mismatch"] else "ok")
        assert await text(page, '#global-control [data-metric="srm-p-value"]') == (
            f"{srm['p_value']:.3g}"
        )
        for arm in control["analysis"]["arms"]:
            row = f'#global-control table.arms tr[data-arm="{arm["arm"]}"]'
            assert await text(page, f'{row} [data-metric="users"]') == str(arm["users"])
            assert await text(page, f'{row} [data-metric="conversions"]') == str(arm["conversions"])
        incremental = workspace["incremental_conversions"]
        for part in ("value", "low", "high"):
            shown = await text(page, f'[data-metric="incremental-conversions-{part}"]')
            assert shown == f"{incremental[part]:.2f}", part
        revenue = await text(page, '[data-metric="incremental-revenue-value"]')
        assert revenue == f"{workspace['incremental_revenue']['value']:.2f}"
        for line in workspace["journeys"]:
            row = f'#journeys tr[data-journey="{line["key"]}"]'
            assert await text(page, f'{row} [data-metric="users"]') == str(line["users"])
            assert await text(page, f'{row} [data-metric="converted"]') == str(line["converted"])

        # a journey's page, by its link
        await page.click('#journeys tr[data-journey="offer"] a')
        await page.wait_for_url("**/reports/journeys/offer")
        steps = page.locator("#funnel tr[data-step]")
        assert await steps.evaluate_all("rows => rows.map(r => r.dataset.step)") == [
            s["step"] for s in journey["funnel"]
        ]
        for step in journey["funnel"]:
            row = f'#funnel tr[data-step="{step["step"]}"]'
            assert await text(page, f'{row} [data-metric="users"]') == str(step["users"])
        assert await page.locator("#funnel svg.funnel-bar").count() == len(journey["funnel"])
        holdout_page = await page.get_attribute("#holdout a", "href")
        assert holdout_page == "/reports/journeys/offer/experiments/holdout"
        for arm in journey["holdout"]["analysis"]["arms"]:
            row = f'#holdout table.arms tr[data-arm="{arm["arm"]}"]'
            assert await text(page, f'{row} [data-metric="users"]') == str(arm["users"])
            assert await text(page, f'{row} [data-metric="conversion-rate"]') == rate(
                arm["conversion_rate"]["value"]
            )
        for channel in journey["attribution"]:
            row = f'#attribution tr[data-channel="{channel["channel"]}"]'
            for metric in ("sent", "first_touch", "last_touch"):
                shown = await text(page, f'{row} [data-metric="{metric.replace("_", "-")}"]')
                assert shown == str(channel[metric]), (channel["channel"], metric)
            shown = await text(page, f'{row} [data-metric="last-touch-revenue"]')
            assert shown == f"{channel['last_touch_revenue']:.2f}"

        # the experiment's page, by its link
        await page.click('#experiments article[data-experiment="discount_test"] h3 a')
        await page.wait_for_url("**/reports/journeys/offer/experiments/discount_test")
        # the sample-ratio check comes first, before any other result
        first = await page.evaluate("document.querySelector('main section').id")
        assert first == "sample-ratio"
        srm = experiment["analysis"]["sample_ratio"]
        assert await text(page, '#sample-ratio [data-metric="srm-p-value"]') == (
            f"{srm['p_value']:.3g}"
        )
        for arm in experiment["analysis"]["arms"]:
            row = f'#arms tr[data-arm="{arm["arm"]}"]'
            estimate = arm["conversion_rate"]
            assert await text(page, f'{row} [data-metric="users"]') == str(arm["users"])
            assert await text(page, f'{row} [data-metric="conversions"]') == str(arm["conversions"])
            assert await text(page, f'{row} [data-metric="conversion-rate"]') == rate(
                estimate["value"]
            )
            for end in ("low", "high"):
                shown = await text(page, f'{row} [data-metric="conversion-rate-{end}"]')
                assert shown == rate(estimate[end]), (arm["arm"], end)
            assert await page.locator(f"{row} svg.interval circle.point").count() == 1
        [comparison] = experiment["analysis"]["comparisons"]
        lift = comparison["conversion"]
        article = f'#lift article[data-arm="{comparison["arm"]}"]'
        intervals = {"lift-absolute": lift["absolute"],
                     "lift-sequential": lift["sequential"]["difference"]}  # fmt: skip
        for metric, estimate in intervals.items():
            assert await text(page, f'{article} [data-metric="{metric}"]') == points(
                estimate["value"]
            )
            for end in ("low", "high"):
                shown = await text(page, f'{article} [data-metric="{metric}-{end}"]')
                assert shown == points(estimate[end]), (metric, end)
        assert await text(page, f'{article} [data-metric="p-value"]') == f"{lift['p_value']:.3g}"
        verdict = await page.get_attribute(f'{article} [data-metric="verdict"]', "data-state")
        assert verdict == expected_verdict(lift)
        detectable = lift["minimum_detectable"]["absolute"]
        shown = await text(page, f'#power tr[data-arm="{comparison["arm"]}"] '
                                 '[data-metric="minimum-detectable"]')  # fmt: skip
        assert shown == points(detectable)
        needed = experiment["analysis"]["users_needed"]
        assert [n["relative_lift"] for n in needed] == [0.05, 0.1, 0.2]
        for n in needed:
            shown = await text(page, f'#users-needed tr[data-lift="{n["relative_lift"]}"] '
                                     '[data-metric="users-needed"]')  # fmt: skip
            assert shown == f"{n['users_per_arm']:,}"

        # the chart: one line per arm, each with its band, and the always-valid difference
        arms = [a["arm"] for a in experiment["timeline"][-1]["arms"]]
        lines = page.locator("#rate-chart path.line")
        assert await lines.evaluate_all("ps => ps.map(p => p.dataset.arm)") == arms
        assert len(experiment["timeline"]) >= DAYS
        paths = await lines.evaluate_all("ps => ps.map(p => p.getAttribute('d'))")
        assert all(" L" in d for d in paths)  # a line through the days, not a lone point
        bands = page.locator("#rate-chart path.band")
        assert await bands.count() == len(arms)
        outlines = await bands.evaluate_all("ps => ps.map(p => p.getAttribute('d'))")
        assert all(d.startswith("M") and d.endswith("Z") for d in outlines)
        assert await page.locator("#difference-chart path.band").count() == 1
        assert await page.locator("script").count() == 0
        assert errors == []
        background = "getComputedStyle(document.querySelector('#sample-ratio')).backgroundColor"
        assert await page.evaluate(background) != "rgba(0, 0, 0, 0)"  # the stylesheet applied

        shot = tmp_path / "report-page.png"
        await page.screenshot(path=shot, full_page=True)
        assert 0 < shot.stat().st_size < 300_000


async def test_empty_journeys_render_and_only_a_reports_key_opens_the_pages(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(
        {"quiet": QUIET, "offer": OFFER}, workspace={"config": "global_control: 20\n"}
    )
    await skew(stack.services.engine, control=300, discount=200)  # a broken split
    async with chromium() as browser:
        page = await browser_page(browser)
        for path in ("/reports/", "/reports/journeys/quiet",
                     "/reports/journeys/quiet/experiments/quiet_test",
                     "/reports/journeys/quiet/experiments/holdout"):  # fmt: skip
            response = await page.goto(stack.api_url + path)
            assert response is not None
            assert response.status == 200, path
        await page.goto(f"{stack.api_url}/reports/journeys/quiet")
        # the name is shown as typed, not as markup
        assert await text(page, "h1") == 'Quiet <b>launch</b> & "friends"'
        assert await page.locator("main b").count() == 0
        assert await text(page, '#summary [data-metric="users"]') == "0"
        assert "Nobody has entered" in await text(page, "#funnel")
        assert await page.get_attribute("#holdout .srm-line", "data-state") == "empty"
        await page.goto(f"{stack.api_url}/reports/journeys/quiet/experiments/quiet_test")
        assert await page.get_attribute("#sample-ratio", "data-state") == "empty"
        assert "No users yet" in await text(page, "#arms")
        assert await page.locator("svg.time-chart").count() == 0
        # a broken split is the first thing the page says, and it voids the verdict
        await page.goto(f"{stack.api_url}/reports/journeys/offer/experiments/discount_test")
        assert await page.evaluate("document.querySelector('main section').id") == "sample-ratio"
        assert await page.get_attribute("#sample-ratio", "data-state") == "mismatch"
        assert await page.get_attribute("#sample-ratio", "role") == "alert"
        verdict = page.locator('#lift [data-metric="verdict"]')
        assert await verdict.get_attribute("data-state") == "distrust"
        missing = await page.goto(f"{stack.api_url}/reports/journeys/nope")
        assert missing is not None
        assert missing.status == 404
        assert "nope" in await text(page, ".refusal")

    url = f"{stack.api_url}/reports/journeys/quiet"
    async with httpx.AsyncClient() as http:
        nothing = await http.get(url)
        wrong = await http.get(url, headers=basic("marketer", "sk_wrong_0123456789abcdefghij"))
        unscoped = await http.get(url, headers=basic("marketer", ARBITRATE_ONLY_KEY))
        write_key = await http.get(url, headers=basic(WRITE_KEY, ""))
        token = await http.get(url, headers={"authorization": f"Bearer {user_token('ada')}"})
        bearer = await http.get(url, headers={"authorization": f"Bearer {SERVER_KEY}"})
        as_browser = await http.get(url, headers={"accept": "text/html,*/*;q=0.8"})
        bare = await http.get(f"{stack.api_url}/reports", headers=basic("m", SERVER_KEY))
        document = (await http.get(f"{stack.api_url}/openapi.json")).json()
    for refused in (nothing, wrong):
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith('Basic realm="reports"')
        assert "error" in refused.json()  # an API client gets the API's JSON
    assert [r.status_code for r in (unscoped, write_key, token)] == [403, 403, 403]
    assert "lacks scope reports:read" in unscoped.json()["error"]
    assert bearer.status_code == 200
    assert bearer.headers["content-type"].startswith("text/html")
    assert (bare.status_code, bare.headers["location"]) == (308, "/reports/")
    policy = bearer.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src" not in policy
    # a browser gets a page to show if the person cancels the login prompt
    assert as_browser.status_code == 401
    assert as_browser.headers["content-type"].startswith("text/html")
    assert as_browser.headers["www-authenticate"].startswith("Basic")
    # the OpenAPI document says what opens the pages
    scheme = document["components"]["securitySchemes"]["reportKey"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "basic")
    for path in ("/reports/", "/reports/journeys/{key}",
                 "/reports/journeys/{key}/experiments/{experiment}"):  # fmt: skip
        security = document["paths"][path]["get"]["security"]
        assert {"reportKey": ["reports:read"]} in security, path
        assert {"serverKey": ["reports:read"]} in security, path


# ---- what the pages compute, without a browser -----------------------------------------


def test_numbers_are_worded_with_their_intervals() -> None:
    f = formats
    assert f.with_interval(Estimate(0.579, 0.265, 0.769), f.points, " points") == (
        "+57.9 points (+26.5 to +76.9)"
    )
    assert f.with_interval(Estimate(0.421, 0.231, 0.637), f.rate) == "42.1% (23.1% to 63.7%)"
    assert f.with_interval(Estimate.of(1.38), f.relative) == "+138%"  # no interval, none shown
    assert f.with_interval(Estimate(None), f.amount) == "-"
    assert f.p_value(0.000708123) == "0.000708"


def result_of(users: tuple[int, int], conversions: tuple[int, int]) -> ExperimentResult:
    arms = [ArmTotals(a, u, c) for a, u, c in zip(("control", "bold"), users, conversions,
                                                 strict=True)]  # fmt: skip
    analysis = analyse(arms, control="control", planning_users=10_000, shares=[0.5, 0.5])
    shares = {"control": 0.5, "bold": 0.5}
    return ExperimentResult("j", "t", "experiment", "fixed", "control", shares, sum(users),
                            analysis, None, 0, ())  # fmt: skip


@pytest.mark.parametrize(
    ("users", "conversions", "srm", "verdict"),
    [
        ((1000, 1000), (100, 200), "ok", "better"),
        ((1000, 1000), (200, 100), "ok", "worse"),
        ((1000, 1000), (100, 105), "ok", "inconclusive"),
        ((1000, 700), (100, 200), "mismatch", "distrust"),
        ((10, 10), (0, 0), "ok", "inconclusive"),
        ((0, 10), (0, 2), "ok", "no-data"),
    ],
)
def test_the_verdict_in_words(
    users: tuple[int, int], conversions: tuple[int, int], srm: str, verdict: str
) -> None:
    view = experiment_view(result_of(users, conversions))
    assert view.sample_ratio.state == srm
    [comparison] = view.comparisons
    assert comparison.verdict.state == verdict


def test_a_chart_breaks_its_line_where_a_day_has_no_value_and_keeps_a_lone_days_band() -> None:
    from datetime import date, timedelta

    days = [date(2026, 1, 1) + timedelta(days=n) for n in range(5)]
    values = [Estimate(0.1, 0.05, 0.2), None, Estimate(0.12, 0.08, 0.18),
              Estimate(0.11, 0.09, 0.14), Estimate(0.1, 0.09, 0.12)]  # fmt: skip
    alike = [Estimate(0.1, 0.05, 0.2)] * 4 + [Estimate(0.1001, 0.09, 0.12)]
    chart = charts.time_chart(
        days,
        [charts.Series("a", 0, values), charts.Series("b", 1, alike)],
        within=(0, 1),
        signed=False,
    )
    first = chart.lines[0]
    assert first.path.count("M") == 2  # the lone first day, then days three to five
    assert first.band.count("Z") == 2
    assert all(0 <= float(t.label.rstrip("%")) <= 100 for t in chart.y_ticks)
    # lines ending together keep their names apart
    assert abs(chart.lines[0].label_y - chart.lines[1].label_y) >= charts.LABEL_GAP
    [only] = charts.time_chart(days[:1], [charts.Series("a", 0, values[:1])],
                               within=(0, 1), signed=False).lines  # fmt: skip
    assert only.band.startswith("M")  # a day's interval, a little wide so that it shows
    assert only.path.startswith("M")
