"""`orchestrator ranking evaluate`: the built-in model against popularity and EASE, offline."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="The ranking model behind ranked content.", no_args_is_help=True)

RETAIL = Path(__file__).resolve().parents[2] / "shared" / "data" / "uci-online-retail"
DEFAULT_DATA = RETAIL / "online_retail.csv.gz"


@app.command()
def evaluate(
    data: Annotated[
        Path, typer.Option(help="A file shaped like UCI Online Retail (CSV, or CSV.gz)")
    ] = DEFAULT_DATA,
    cutoff: Annotated[
        datetime, typer.Option(formats=["%Y-%m-%d"], help="Train before, test from this date")
    ] = datetime(2011, 9, 1),  # noqa: DTZ001 (the dataset's times are naive UK local time)
) -> None:
    """Split by date, train on the past, and print precision, recall, NDCG, hit rate and
    catalogue coverage at 5, 10 and 20 for the model, popularity and EASE."""
    from orchestrator.ranking.evaluation import evaluate as score
    from orchestrator.ranking.evaluation import split, table
    from orchestrator.ranking.model import Ease, HybridModel, Popularity
    from orchestrator.ranking.retail import DatasetError, read_retail

    try:
        dataset = read_retail(data)
    except DatasetError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
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
    results = []
    started = time.perf_counter()
    popularity = Popularity(held.train, now=cutoff)
    trained = {"popularity": time.perf_counter() - started}
    results.append(score("popularity", lambda u, k: popularity.recommend(u, k, held.history[u]),
                         held, size))  # fmt: skip
    started = time.perf_counter()
    model = HybridModel.train(held.train, dataset.items, now=cutoff)
    trained["model"] = time.perf_counter() - started
    results.append(
        score("model", lambda u, k: model.recommend(held.history[u], k).items, held, size)
    )
    started = time.perf_counter()
    ease = Ease(held.train)
    trained["EASE"] = time.perf_counter() - started
    results.append(score("EASE", lambda u, k: ease.recommend(u, k), held, size))
    typer.echo("\n" + table(results) + "\n")
    for result in results:
        typer.echo(f"{result.name}: trained in {trained[result.name]:.1f} s, "
                   f"scored in {result.seconds:.1f} s")  # fmt: skip
    ndcg = {r.name: r.values["ndcg@10"] for r in results}
    typer.echo(f"NDCG@10: model {ndcg['model']:.4f} = {ndcg['model'] / ndcg['popularity']:.2f}x "
               f"popularity, {ndcg['model'] / ndcg['EASE']:.2f}x EASE")  # fmt: skip
