"""Email addresses as a channel system can take them: exactly one, nothing around it."""

from __future__ import annotations

import re
from typing import Any

# One addr-spec, no display name, no list, no whitespace or line breaks (which would
# let a trait inject headers), at most the 254 characters SMTP allows.
_ONE_ADDRESS = re.compile(r"[^@\s,;:<>()\[\]\"\\]+@[^@\s,;:<>()\[\]\"\\]+\.[^@\s,;:<>()\[\]\"\\]+")


def is_one_address(value: Any) -> bool:
    return (
        isinstance(value, str) and len(value) <= 254 and _ONE_ADDRESS.fullmatch(value) is not None
    )
