"""Which variant a user gets: of an experiment step, or of a send's template.

A fixed experiment hashes the user (stateless and sticky). A bandit asks the store in
a local activity, which remembers the user's pick across runs and draws new users by
Thompson sampling on conversions; the draw is in the history, so replay reads it. If
the store cannot be reached the fixed split (or the send's first template) is used.
Picks are also kept in the journey's state, so a run asks once per experiment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from temporalio import workflow
from temporalio.exceptions import ActivityError

from workflows.assignment import pick_variant
from workflows.messages import ChooseVariantInput
from workflows.retries import LOCAL_TIMEOUT, SIDE_EFFECT_RETRY
from workflows.runtime import WorkflowApi
from workflows.spec import Experiment, Send

Reward = Literal["goal", "click", "click_on_variant"]
EXPERIMENT_KEYS_PER_JOURNEY = "experiment-keys-per-journey"


@dataclass(frozen=True)
class Choices:
    journey_key: str
    user_id: str
    enrollment_id: int
    assignments: dict[str, str]  # the journey state's, kept up to date
    rt: WorkflowApi = workflow
    current: bool = False  # a generation 2 journey: started after every patch

    async def variant(self, experiment: Experiment) -> str:
        if (name := self.assignments.get(experiment.key)) is None:
            names = [v.name for v in experiment.variants]
            drawn = None
            if experiment.mode == "bandit":
                drawn = await self._draw(
                    experiment.key, names, experiment.min_share, experiment.reward
                )
            weights = [v.weight for v in experiment.variants]
            # Keys are scoped by journey, so that the same key in two journeys does not
            # split users identically (runs before this change keep the old hash).
            hashed = (
                f"{self.journey_key}/{experiment.key}"
                if self.current or self.rt.patched(EXPERIMENT_KEYS_PER_JOURNEY)
                else experiment.key
            )
            name = drawn or names[pick_variant(hashed, self.user_id, weights)]
            self.assignments[experiment.key] = name
        return name

    async def template(self, send: Send) -> str:
        variants = send.variants
        if variants is None:
            return send.template
        if (name := self.assignments.get(variants.key)) is None:
            reward: Reward = "click_on_variant" if variants.reward == "click" else "goal"
            drawn = await self._draw(
                variants.key, send.templates, variants.min_share, reward, kind="template"
            )
            name = drawn or send.template
            self.assignments[variants.key] = name
        return name

    async def _draw(
        self,
        key: str,
        names: list[str],
        min_share: float,
        reward: Reward,
        *,
        kind: Literal["experiment", "template"] = "experiment",
    ) -> str | None:
        try:
            chosen: str = await self.rt.execute_local_activity(
                "choose_variant",
                ChooseVariantInput(
                    journey_key=self.journey_key,
                    experiment_key=key,
                    user_id=self.user_id,
                    enrollment_id=self.enrollment_id,
                    variants=names,
                    min_share=min_share,
                    reward=reward,
                    kind=kind,
                ),
                result_type=str,
                start_to_close_timeout=LOCAL_TIMEOUT,
                retry_policy=SIDE_EFFECT_RETRY,
            )
        except ActivityError:
            return None
        return chosen
