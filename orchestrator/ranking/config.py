"""`ranking:` in orchestrator.yaml: where ranked content comes from, how the built-in model
is watched online (`monitoring`), its input drift (`drift`) and each slot's diversity
stage (`slots`). Part of `orchestrator.workspace.WorkspaceConfig`."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rules.durations import Duration


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RankingMonitoringConfig(_Config):
    """How ranked content is judged online (`orchestrator ranking monitor`) and when the
    guard rolls a canary back or takes a degraded active version out of service."""

    check_every: Duration = Field(default=timedelta(minutes=5), description="The guard's pace")
    attribution: Duration = Field(
        default=timedelta(days=7),
        description="A purchase of a recommended item within this after a message converts it",
    )
    window: Duration = Field(
        default=timedelta(days=1), description="The active version is judged on this much"
    )
    min_click_rate: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="The floor: an active version whose click rate per message is clearly "
        "under it (the 95% interval's top) is marked degraded and the baseline answers",
    )
    min_messages: int = Field(
        default=500, ge=20, description="Messages needed before the floor or fallbacks judge"
    )
    canary_min_users: int = Field(
        default=200, ge=20, description="Users per arm before a canary's results are judged"
    )
    canary_max_fallback_share: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="A canary whose messages the baseline fills more often than this (for "
        "any reason but the user's opt-out) is rolled back",
    )
    canary_planning_users: int = Field(
        default=10_000,
        ge=100,
        description="Both arms' users at the look that matters most (tunes the always-valid test)",
    )
    by: str | None = Field(
        default=None,
        min_length=1,
        description="A trait to break results down by, e.g. country: cards' offline metrics "
        "and the online click and purchase rates, with groups served clearly worse flagged",
    )
    bands: list[float] | None = Field(
        default=None, min_length=1, description="Group a numeric `by` trait, e.g. [25, 35, 50]"
    )

    @field_validator("bands")
    @classmethod
    def _increasing(cls, bands: list[float] | None) -> list[float] | None:
        if bands is not None and any(b <= a for a, b in itertools.pairwise(bands)):
            raise ValueError("bands must be increasing numbers, e.g. [25, 35, 50, 65]")
        return bands


class DiversityConfig(_Config):
    """The diversity stage after the model, for one slot (orchestrator/ranking/diversity.py)."""

    mmr_lambda: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="Maximal marginal relevance: 1 keeps the model's order; lower values "
        "trade relevance for items unlike (in category) those already in the list",
    )
    per_category: int | None = Field(
        default=None, ge=1, le=100, description="At most this many items of one category"
    )

    @model_validator(mode="after")
    def _does_something(self) -> DiversityConfig:
        if self.mmr_lambda == 1 and self.per_category is None:
            raise ValueError("give `mmr_lambda` under 1, `per_category`, or both")
        return self


class SlotConfig(_Config):
    """Settings for one recommendation slot (`content.recommendations.slot`)."""

    diversity: DiversityConfig | None = None


class DriftConfig(_Config):
    """When the active version's input has drifted from its training (see
    `orchestrator.ranking.drift`): an alert, and a retraining with `--when drift`."""

    window: Duration = Field(
        default=timedelta(days=7), description="Live traffic: the purchases of this long back"
    )
    item_psi: float = Field(
        default=0.2,
        gt=0,
        description="PSI of purchases over items (binned by training popularity) above "
        "this is drift (by convention 0.1 is a moderate shift, 0.25 a major one)",
    )
    history_psi: float = Field(
        default=0.2, gt=0, description="PSI of active users' history lengths above this"
    )
    unseen_share: float = Field(
        default=0.15,
        gt=0,
        le=1,
        description="Share of live purchases of items the version never saw bought",
    )
    min_purchases: int = Field(
        default=200,
        ge=1,
        description="Fewer live purchases than this is not enough traffic, never drift",
    )
    min_users: int = Field(
        default=100, ge=1, description="Fewer active users than this: no history-length PSI"
    )
    cooldown: Duration = Field(
        default=timedelta(days=1),
        description="After a version is trained, drift does not retrain again for this long "
        "(a rejected candidate would otherwise be retrained at every check)",
    )


class RankingConfig(_Config):
    """Where ranked content comes from. Without a `url`, the popularity baseline answers."""

    url: str | None = Field(
        default=None, pattern=r"^https?://", description="An external model's endpoint"
    )
    builtin: bool = Field(
        default=False,
        description="Serve the active version of the built-in model (orchestrator ranking train)",
    )
    deadline_ms: float = Field(
        default=8, gt=0, le=10_000, description="After this, the baseline answers instead"
    )
    min_confidence: float = Field(default=0.2, ge=0, le=1)
    exploration: float = Field(
        default=0,
        ge=0,
        le=0.5,
        description="The chance, per position after the first of a model-filled message, "
        "of showing an item the model ranked lower; each shown item's chance is logged",
    )
    slots: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")], SlotConfig] = Field(
        default_factory=dict,
        description="Per slot: a diversity stage applied to model-filled lists",
    )
    personalization_trait: str = Field(
        default="personalization", description="`false` in this trait opts a user out"
    )
    popularity_events: list[str] = Field(
        default_factory=lambda: ["Order Completed"],
        min_length=1,
        description="Events whose properties.products[].product_id count towards popularity",
    )
    popularity_window: Duration = Field(default=timedelta(days=30))
    refresh_every: Duration = Field(default=timedelta(minutes=5))
    drift: DriftConfig = Field(default_factory=DriftConfig)

    monitoring: RankingMonitoringConfig = Field(
        default_factory=lambda: RankingMonitoringConfig(),
        description="How the built-in model is watched online, and when the guard steps in",
    )

    @model_validator(mode="after")
    def _one_model(self) -> RankingConfig:
        if self.url and self.builtin:
            raise ValueError("give either `url` (an external model) or `builtin: true`, not both")
        return self
