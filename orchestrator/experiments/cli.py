"""`orchestrator experiments plan | evaluate-policy | end`: how many users an experiment
needs, another allocation judged on the logs, and archiving an experiment's results."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Literal

import typer

from orchestrator.cli_settings import database_url

app = typer.Typer(
    help="Experiments: planning their size, judging other allocations on their logs, ending them.",
    no_args_is_help=True,
)

LABELS = {"ips": "IPS", "snips": "SNIPS", "doubly_robust": "doubly robust"}


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


@app.command("plan")
def plan(
    rate: Annotated[float, typer.Option(help="The conversion rate now: 0.05 for 5%")],
    lift: Annotated[float, typer.Option(help="The relative lift to find: 0.1 for +10%")],
    arms: Annotated[int, typer.Option(min=2, help="Arms, the control included")] = 2,
) -> None:
    """Users an experiment needs to find a lift in conversion (two-sided test at 95%
    confidence, found 80% of the time), as its report's power section counts them."""
    from orchestrator.reports.power import POWER, users_per_arm_for_rate

    if not 0 < rate < 1:
        raise typer.BadParameter("must be between 0 and 1 (0.05 for 5%)", param_hint="--rate")
    needed = users_per_arm_for_rate(rate, lift)
    if needed is None:
        raise typer.BadParameter(f"{rate} x (1 + lift) must be another rate between 0 and 1",
                                 param_hint="--lift")  # fmt: skip
    typer.echo(f"{needed:,} users per arm, {needed * arms:,} in all, to find {rate:.2%} -> "
               f"{rate * (1 + lift):.2%} ({lift:+.0%}) {POWER:.0%} of the time at 95% "
               "confidence, read once at that size")  # fmt: skip


@app.command("evaluate-policy")
def evaluate_policy(
    journey: Annotated[str, typer.Option(help="The journey's key")],
    experiment: Annotated[str, typer.Option(help="The experiment's key (or a send's variants)")],
    policy: Annotated[
        str,
        typer.Option(help="always:ARM, split:ARM=WEIGHT,ARM=WEIGHT,... or logged"),
    ],
    reward: Annotated[
        Literal["goal", "click"],
        typer.Option(help="goal: the journey's goal; click: a click on one of its messages"),
    ] = "goal",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Estimate the rate (goal or click) the journey would have had if the experiment's
    users had been split by POLICY, from the logged assignments and their propensities:
    IPS, self-normalised IPS and doubly robust, each with a 95% bootstrap interval and
    its effective sample size, next to the logged policy's observed rate."""
    from orchestrator.database import create_engine
    from orchestrator.experiments import evaluation

    url = database_url()

    async def work() -> evaluation.PolicyEvaluation:
        engine = create_engine(url, pool_size=1)
        try:
            return await evaluation.evaluate_policy(
                engine, journey=journey, experiment=experiment, policy=policy, reward=reward
            )
        finally:
            await engine.dispose()

    try:
        result = asyncio.run(work())
    except evaluation.EvaluationError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(evaluation.as_json(result), indent=2))
        return
    typer.echo(
        f"{result.journey} / {result.experiment} ({result.kind}, {result.mode}); "
        f"reward: {result.reward}; policy: {result.policy.text}"
    )
    typer.echo(
        f"{result.users:,} assigned users with a propensity"
        + (
            f"; {result.left_out:,} without one left out (assigned before propensities were logged)"
            if result.left_out
            else ""
        )
    )
    typer.echo(f"\n{'arm':<20} {'users':>8} {'observed':>9} {'propensity':>11} {'target':>7}")
    for arm in result.arms:
        share = "" if arm.target_share is None else f"{arm.target_share:.0%}"
        propensity = "" if arm.mean_propensity is None else f"{arm.mean_propensity:.3f}"
        typer.echo(
            f"{arm.arm:<20} {arm.users:>8,} {_rate(arm.observed):>9} {propensity:>11} {share:>7}"
        )
    typer.echo(f"\nlogged policy, observed: {_rate(result.observed)}")
    level = f"{result.confidence:.0%} interval"
    typer.echo(f"{'estimator':<14} {'estimate':>9}   {level:<20} effective n")
    report = result.report
    for name, estimated in (("ips", report.ips), ("snips", report.snips),
                            ("doubly_robust", report.doubly_robust)):  # fmt: skip
        if estimated is None:
            continue
        interval = (
            f"{estimated.low:.4f} to {estimated.high:.4f}"
            if estimated.low is not None and estimated.high is not None
            else "n/a"
        )
        ess = estimated.effective_sample_size
        typer.echo(
            f"{LABELS[name]:<14} {_rate(estimated.value):>9}   {interval:<20} "
            + ("n/a" if ess is None else f"{ess:,.1f}")
        )
    for warning in result.warnings:
        typer.echo(f"note: {warning}")


@app.command("end")
def end(
    journey: Annotated[str, typer.Argument(help="The journey's key")],
    experiment: Annotated[str, typer.Argument(help="The experiment's key, or `holdout`")],
) -> None:
    """Archive an experiment's configuration and results as they stand now: its report
    shows them unchanged from then on, for audits (the step itself keeps running until
    the journey is deployed without it)."""
    from datetime import UTC, datetime

    from orchestrator.access.audit import command_line
    from orchestrator.database import create_engine
    from orchestrator.reports import design, service
    from orchestrator.reports.cli import experiment_lines

    url = database_url()

    async def work() -> service.ExperimentResult:
        engine = create_engine(url, pool_size=1)
        try:
            async with engine.begin() as conn:
                return await service.end_experiment(
                    conn, journey=journey, key=experiment, actor=command_line(),
                    now=datetime.now(UTC),
                )  # fmt: skip
        finally:
            await engine.dispose()

    try:
        result = asyncio.run(work())
    except design.UnknownReport as exc:
        typer.echo(exc.args[0], err=True)
        raise typer.Exit(1) from None
    typer.echo(f"ended {experiment} of {journey}; its results as archived:")
    for line in experiment_lines(result):
        typer.echo(line)
