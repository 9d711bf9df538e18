"""Temporary workspaces for tests: orchestrator.yaml, journeys and templates on disk."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

from orchestrator.access import tokens
from orchestrator.access.credentials import UserTokens

SECRETS = {
    "email": "whsec_SN6HEFrrhJp7Ygw3WCXl9y60mXqXOufBv2Nogw2ifLU=",
    "push": "whsec_qC3XmmWWYcV0mdqAJ9XkZlkhgMicC03ncHzSZZ663Gc=",
    "in_app": "whsec_fUZdvdlp+p4FPe2qWdR5J/lbQwYBU0y5PPocWqQnG6Y=",
    "web": "whsec_aLnp1vXS2yfrd7BHMqBvvT6uG+1WnEw6Zj/mRbSHe6A=",
    "hooks": "whsec_4RbVi3p0QIgU/Lx61JPDw8uqOMKhqwgdzBBT8BFcVwM=",
    "links": "whsec_S9CnRL0qAzWezb69U1gRtgvCoCKc/k0tmYC66tl6/b0=",
}
WRITE_KEY = "wk_test_0123456789"
# A backend's key with every scope but admin, an admin's, and one that may only arbitrate.
SERVER_KEY = "sk_test_backend_0123456789abcdef"
ADMIN_KEY = "sk_test_admin_0123456789abcdef01"
ARBITRATE_ONLY_KEY = "sk_test_arbitrate_0123456789abcd"
USER_TOKEN_SECRET = "ut_test_secret_0123456789abcdef0123456789"
CREDENTIALS = f"""
api_keys:
  - name: backend
    secret: {SERVER_KEY}
    scopes: [catalog:write, arbitrate, users:read, users:write, journeys:read, ranking,
             reports:read]
  - name: ops
    secret: {ADMIN_KEY}
    scopes: [admin]
  - name: sms_gateway
    secret: {ARBITRATE_ONLY_KEY}
    scopes: [arbitrate]
user_tokens:
  secret: {USER_TOKEN_SECRET}
"""

TEMPLATES = {
    "hello": """
        email:
          subject: "Hello {{ user.first_name | default('there') }}"
          text: "Step {{ journey.step }} of {{ journey.key }}; event {{ event.name }}"
        push:
          title: "Hi {{ user.first_name | default('there') }}"
          body: "Cart {{ event.properties.cart_value }}"
        in_app:
          title: In app
          body: "Hello {{ user.id }}"
    """,
}


# Journey-engine tests address users by id alone; arbitration tests pass their own policy.
REACH_EVERYONE = "reachability: {email: null, push: null, in_app: null, web: null}\n"


def write_workspace(
    root: Path,
    *,
    receiver_url: str,
    journeys: dict[str, str],
    templates: dict[str, str] | None = None,
    channels: tuple[str, ...] = ("email", "push", "in_app"),
    default_timezone: str = "UTC",
    policy: str = REACH_EVERYONE,
    config: str = "",
    stored_only: tuple[str, ...] = (),
    credentials: str = CREDENTIALS,
    source: str = "",
    public_source: bool = False,
    files: dict[str, str] | None = None,
) -> Path:
    """Write a workspace whose channels deliver to `receiver_url/<channel>` (in-app and
    web channels in `stored_only` have no URL); `source` adds settings to the source,
    `credentials` (API keys and the user token secret) and `config` are appended to
    orchestrator.yaml; `files` are more workspace files (traits.yaml, segments.yaml)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "journeys").mkdir(exist_ok=True)
    (root / "templates").mkdir(exist_ok=True)
    channel_lines = "".join(
        f"  {name}:\n"
        + ("" if name in stored_only else f"    url: {receiver_url}/{name}\n")
        + f"    signing_secret: {SECRETS[name]}\n    timeout: 2\n"
        for name in channels
    )
    source_lines = textwrap.indent(textwrap.dedent(source).strip() + "\n", "    ") if source else ""
    (root / "orchestrator.yaml").write_text(
        f"workspace: test\n"
        f"default_timezone: {default_timezone}\n"
        f"sources:\n  - name: tests\n    write_key: {WRITE_KEY}\n"
        # A backend's key unless a test says otherwise (it may send receipts, suppressions).
        f"    server_side: {'false' if public_source else 'true'}\n{source_lines}"
        f"channels:\n{channel_lines}"
        f"webhooks:\n  signing_secret: {SECRETS['hooks']}\n"
        f"links:\n  base_url: http://127.0.0.1:8000\n  signing_secret: {SECRETS['links']}\n"
        f"sample_profile:\n  traits: {{first_name: Ada}}\n"
        + textwrap.dedent(credentials)
        + textwrap.dedent(config)
    )
    (root / "policy.yaml").write_text(textwrap.dedent(policy).lstrip())
    for name, text in journeys.items():
        (root / "journeys" / f"{name}.yaml").write_text(textwrap.dedent(text).lstrip())
    for name, text in (templates if templates is not None else TEMPLATES).items():
        (root / "templates" / f"{name}.yaml").write_text(textwrap.dedent(text).lstrip())
    for name, text in (files or {}).items():
        (root / name).write_text(textwrap.dedent(text).lstrip())
    return root


def user_token(user_id: str, *, ttl: timedelta = timedelta(hours=1)) -> str:
    """A token for `user_id`, as the customer's backend would mint it."""
    config = UserTokens(secret=USER_TOKEN_SECRET)
    return tokens.mint(config, user_id, ttl=ttl, now=datetime.now(UTC))


# A journey nothing enters: for stacks whose tests need no journey of their own.
NOOP = """
journey: noop
name: Noop
trigger: {event: Never Happens}
start: done
steps:
  done:
    exit: {}
"""
