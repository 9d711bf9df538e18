"""How long the journey's activities may take and how they are retried."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

LOCAL_TIMEOUT = timedelta(seconds=10)
SEND_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
    maximum_attempts=30,
    non_retryable_error_types=["PermanentDeliveryError", "RenderError"],
)
SIDE_EFFECT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=20,
    non_retryable_error_types=["PermanentDeliveryError", "RenderError"],
)
