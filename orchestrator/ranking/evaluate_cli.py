"""`orchestrator ranking evaluate` and `evaluate-logs`: the built-in model offline, against
popularity and EASE (by group, with the diversity stage), and a stored version on the
items logged messages showed (merged into `orchestrator ranking`)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli_settings import database_url

app = typer.Typer()

RETAIL = Path(__file__).resolve().parents[3] / "shared" / "data" / "uci-online-retail"
DEFAULT_DATA = RETAIL / "online_retail.csv.gz"


@app.command()
def evaluate(
    data: Annotated[
        Path, typer.Option(help="A file shaped like UCI Online Retail (CSV, or CSV.gz)")
    ] = DEFAULT_DATA,
    cutoff: Annotated[
        datetime, typer.Option(formats=["%Y-%m-%d"], help="Train before, test from this date")
    ] = datetime(2011, 9, 1),  # noqa: DTZ001 (the dataset's times are naive UK local time)
    by: Annotated[
        str | None,
        typer.Option(help="Also report the model by this customer attribute, e.g. Country"),
    ] = None,
    bands: Annotated[
        str | None,
        typer.Option(help="Group a numeric --by attribute in bands, e.g. 25,35,50,65"),
    ] = None,
    min_users: Annotated[
        int, typer.Option(min=2, help="Smaller groups are folded into 'other'")
    ] = 30,
    gap: Annotated[
        float,
        typer.Option(min=0.01, max=0.99, help="How far below the rest (relative) is worse"),
    ] = 0.2,
    mmr: Annotated[
        float | None,
        typer.Option(min=0.01, max=1.0, help="Also score the model re-ranked by MMR (lambda)"),
    ] = None,
    per_category: Annotated[
        int | None,
        typer.Option(min=1, help="Also score the model with at most N items per category"),
    ] = None,
) -> None:
    """Split by date, train on the past, and print precision, recall, NDCG, hit rate,
    catalogue coverage, intra-list diversity, novelty and Gini at 5, 10 and 20 for the
    model, popularity and EASE; with --mmr or --per-category, also for the model after
    the diversity stage (categories derived from item names); with --by, the model's
    metrics per group with intervals, and the groups it serves clearly worse."""
    from orchestrator.ranking.beyond_accuracy import ItemSpace
    from orchestrator.ranking.evaluation import evaluate as score
    from orchestrator.ranking.evaluation import split, table
    from orchestrator.ranking.model import Ease, HybridModel, Popularity
    from orchestrator.ranking.retail import DatasetError, read_retail

    edges = bands_option(bands)
    try:
        dataset = read_retail(data)
    except DatasetError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    if by is not None and not any(by in found for found in dataset.customers.values()):
        typer.echo(f"--by: no customer in {data} has a value for {by!r}", err=True)
        raise typer.Exit(1)
    held = split(dataset.purchases, cutoff)
    if not held.train or not held.relevant:
        typer.echo(
            f"nothing to evaluate: no purchases on both sides of {cutoff:%Y-%m-%d}", err=True
        )
        raise typer.Exit(1)
    typer.echo(
        f"{dataset.rows:,} rows, {dataset.kept:,} clean purchases; train before "
        f"{cutoff:%Y-%m-%d}: {len(held.train):,} purchases; test: {len(held.relevant):,} "
        f"returning users with new purchases ({held.cold_users:,} new users not scored)"
    )
    size = len(dataset.items)
    space = ItemSpace(dataset.items)
    results = []
    started = time.perf_counter()
    popularity = Popularity(held.train, now=cutoff)
    trained = {"popularity": time.perf_counter() - started}
    results.append(score("popularity", lambda u, k: popularity.recommend(u, k, held.history[u]),
                         held, size, space=space))  # fmt: skip
    started = time.perf_counter()
    model = HybridModel.train(held.train, dataset.items, now=cutoff)
    trained["model"] = time.perf_counter() - started
    results.append(
        score("model", lambda u, k: model.recommend(held.history[u], k).items, held, size,
              space=space)
    )  # fmt: skip
    started = time.perf_counter()
    ease = Ease(held.train)
    trained["EASE"] = time.perf_counter() - started
    results.append(score("EASE", lambda u, k: ease.recommend(u, k), held, size, space=space))
    if mmr is not None or per_category is not None:
        from orchestrator.ranking.diversity import derived_categories, diversified

        started = time.perf_counter()
        categories = derived_categories(dataset.items)
        trained["model+diversity"] = trained["model"] + time.perf_counter() - started
        recommend = diversified(
            model, held.history, categories, mmr_lambda=mmr or 1.0, per_category=per_category
        )
        results.append(score("model+diversity", recommend, held, size, space=space))
        typer.echo(
            f"diversity stage: mmr_lambda {mmr or 1.0:g}, per_category {per_category or '-'}; "
            f"{len(set(categories.values()))} categories from item names (k-means)"
        )
    typer.echo("\n" + table(results) + "\n")
    for result in results:
        typer.echo(f"{result.name}: trained in {trained[result.name]:.1f} s, "
                   f"scored in {result.seconds:.1f} s")  # fmt: skip
    ndcg = {r.name: r.values["ndcg@10"] for r in results}
    typer.echo(f"NDCG@10: model {ndcg['model']:.4f} = {ndcg['model'] / ndcg['popularity']:.2f}x "
               f"popularity, {ndcg['model'] / ndcg['EASE']:.3f}x EASE")  # fmt: skip
    if by is not None:
        from orchestrator.ranking.fairness import by_group, summary

        groups = {user: found.get(by) for user, found in dataset.customers.items()}
        for result in results[1:2] + results[3:]:  # what channels serve: the model
            report = by_group(result.users, groups, metrics=GROUP_METRICS, bands=edges,
                              min_users=min_users, gap=gap)  # fmt: skip
            typer.echo("\n" + summary(report, title=f"{result.name} by {by}"))


GROUP_METRICS = ("ndcg@10", "precision@10", "recall@10", "hit_rate@10", "diversity@10",
                 "novelty@10")  # fmt: skip


def bands_option(text: str | None) -> list[float] | None:
    """`--bands 25,35,50`, or one line naming the option and exit 1."""
    from orchestrator.ranking.fairness import parse_bands

    try:
        return None if text is None else parse_bands(text)
    except ValueError as exc:
        typer.echo(f"--bands: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command("evaluate-logs")
def evaluate_logs(
    version: Annotated[int, typer.Argument(help="A stored version (orchestrator ranking list)")],
    since: Annotated[str, typer.Option(help="Messages sent within this long, e.g. 30d")] = "30d",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Estimate the clicks on recommended items per message VERSION would have had if it
    had ranked the slots that logged messages filled (ranking IPS with a 95% bootstrap
    interval), next to what the logged policy got. Items the version puts where the
    logged model did not count only if exploration (`ranking.exploration`) was on."""
    from orchestrator.database import create_engine
    from orchestrator.journeys_cli import root_for
    from orchestrator.ranking.logged import VersionOnLogs, evaluate_version
    from orchestrator.ranking.versions import VersionError
    from orchestrator.workspace import load_config
    from rules.durations import DurationError, parse_duration

    try:
        window = parse_duration(since)
    except DurationError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    url = database_url()
    events = load_config(root_for([], None)).ranking.popularity_events
    start = datetime.now(UTC) - window

    async def work() -> VersionOnLogs:
        engine = create_engine(url, pool_size=1)
        try:
            return await evaluate_version(engine, version=version, since=start, events=events)
        finally:
            await engine.dispose()

    try:
        found = asyncio.run(work())
    except VersionError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    result, estimate = found.result, found.result.estimate
    if as_json:
        figures = {
            "version": version,
            "since": start.isoformat(),
            "messages": found.messages,
            "left_out": {
                "undelivered": found.undelivered,
                "baseline": found.baseline,
                "unlogged": found.unlogged,
            },
            "impressions": result.impressions,
            "exploring": result.exploring,
            "shown": result.shown,
            "clicks": result.clicks,
            "observed": result.observed,
            "matched": result.matched,
            "target_slots": result.target_slots,
            "supported": result.supported,
            "estimate": {
                "estimator": estimate.estimator,
                "value": estimate.value,
                "low": estimate.low,
                "high": estimate.high,
                "resamples": estimate.resamples,
            },
        }
        typer.echo(json.dumps(figures, indent=2))
        return
    typer.echo(
        f"{found.messages:,} messages with ranked content since {start:%Y-%m-%d %H:%M} UTC; "
        f"left out: {found.baseline:,} filled by the baseline, {found.unlogged:,} logged "
        f"without shown items, {found.undelivered:,} not sent"
    )
    typer.echo(
        f"usable: {result.impressions:,} impressions ({result.shown:,} shown items, "
        f"{result.clicks:,} clicked), {result.exploring:,} of them with exploration on"
    )
    if not result.impressions:
        typer.echo("nothing to estimate from")
        return
    share = result.supported / result.target_slots if result.target_slots else 0.0
    typer.echo(
        f"the version's (item, position) pairs the logged policy could have shown: "
        f"{result.supported:,} of {result.target_slots:,} ({share:.0%}); "
        f"shown where the version puts them: {result.matched:,}"
    )
    typer.echo(f"logged policy: {result.observed:.4f} clicks on recommended items per message")
    value = "n/a" if estimate.value is None else f"{estimate.value:.4f}"
    interval = (
        f"95% interval {estimate.low:.4f} to {estimate.high:.4f}"
        if estimate.low is not None and estimate.high is not None
        else "no interval"
    )
    typer.echo(f"version {version} (ranking IPS): {value} ({interval})")
    if result.supported < result.target_slots:
        typer.echo(
            f"note: the {result.target_slots - result.supported:,} pairs the logged policy "
            "could not have shown count for nothing, so this underestimates the version "
            "(exploration reaches items the model ranked below the top k, at positions "
            "after the first)"
        )
