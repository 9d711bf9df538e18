"""What the Temporal UI shows about one user's journey: where they are, and why."""

from __future__ import annotations

from workflows.messages import ENDED, JourneyInput, JourneyState


def current_details(input: JourneyInput, state: JourneyState) -> str:
    """Markdown for `workflow.set_current_details`, kept current as the journey moves."""
    journey, s = input.journey, state
    lines = [
        f"**{journey.spec.name}** (`{journey.key}` v{journey.version}), user "
        + (f"`{s.user_id}` (entered as `{input.user_id}`)" if s.user_id else f"`{input.user_id}`"),
        f"Entered {input.entered_at:%Y-%m-%d %H:%M} UTC on `{input.trigger.name}`; "
        f"messages sent: {s.messages_sent}",
    ]
    if s.status in ENDED:
        lines.append(f"**{s.status}**: {s.end_reason}")
    elif s.status == "waiting" and s.deferred:
        lines.append(f"At `{s.step}`: the send is deferred by arbitration ({s.deferred})")
    elif s.status == "waiting" and s.wake_at is not None:
        what = f"for `{s.waiting_for}` " if s.waiting_for else ""
        lines.append(f"At `{s.step}`: waiting {what}until {s.wake_at:%Y-%m-%d %H:%M} UTC")
    else:
        lines.append(f"At `{s.step}`")
    path = " → ".join(v.step for v in s.recent_steps[-8:])
    if path:
        lines.append(f"Path: {path}")
    if s.assignments:
        lines.append("Experiments: " + ", ".join(f"{k}={v}" for k, v in s.assignments.items()))
    return "\n\n".join(lines)
