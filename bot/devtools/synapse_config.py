"""Synapse configuration for the embedded homeservers: rate limits and logging. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

RateLimits = Literal["relaxed", "strict", "default"]

# High enough that no test or demo ever meets them, low enough to stay a float/int.
_UNLIMITED = {"per_second": 100_000, "burst_count": 1_000_000}

# Every rate limiter a client or the admin API can meet, by config key. "relaxed" sets all
# of them to _UNLIMITED. The defaults are tiny (room creation: 10 then one a minute; joins:
# 10 then one per 10 s; invites to one user: 5 then one per 5 min) and matrix-nio waits
# silently on a 429, so a test that trips one looks like a hang, not a failure.
_RATE_LIMIT_KEYS: tuple[str, ...] = (
    "rc_message",
    "rc_registration",
    "rc_registration_token_validity",
    "rc_login.address",
    "rc_login.account",
    "rc_login.failed_attempts",
    "rc_admin_redaction",
    "rc_joins.local",
    "rc_joins.remote",
    "rc_joins_per_room",
    "rc_key_requests",
    "rc_3pid_validation",
    "rc_invites.per_room",
    "rc_invites.per_user",
    "rc_invites.per_issuer",
    "rc_third_party_invite",
    "rc_media_create",
    "rc_presence.per_user",
    "rc_delayed_event_mgmt",
    "rc_room_creation",
    "rc_reports",
    "rc_user_directory",
    "rc_profile",
)

# "strict" is for the rate-limit test: messages are throttled as a stingy production
# server would, everything else stays relaxed so the test's setup is quick. Note that
# Synapse counts room creation and profile changes against rc_message too.
_STRICT_MESSAGES = {"per_second": 0.5, "burst_count": 5}


def _nested(path: str, value: Mapping[str, float]) -> dict[str, Any]:
    """``"rc_login.address"`` -> ``{"rc_login": {"address": value}}``."""
    head, _, rest = path.partition(".")
    return {head: _nested(rest, value) if rest else dict(value)}


def merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value


def rate_limit_config(rate_limits: RateLimits) -> dict[str, Any]:
    """The ``rc_*`` part of the homeserver config for a rate-limit profile."""
    config: dict[str, Any] = {}
    if rate_limits == "default":
        return config
    for key in _RATE_LIMIT_KEYS:
        merge(config, _nested(key, _UNLIMITED))
    if rate_limits == "strict":
        config["rc_message"] = dict(_STRICT_MESSAGES)
    return config


def delayed_events_config(max_delay: str, per_user: int | None = None) -> dict[str, Any]:
    """The MSC4140 (delayed events) part of the config: ``max_delay`` is the longest
    delay allowed (a Synapse duration such as ``"24h"``); ``per_user`` caps how many
    one user may have scheduled at once (Synapse's default: 100; 0 disables them)."""
    config: dict[str, Any] = {"max_event_delay_duration": max_delay}
    if per_user is not None:
        config["experimental_features"] = {"msc4140_max_delayed_events_per_user": per_user}
    return config


def log_config(level: str) -> dict[str, Any]:
    """Synapse's logging config: everything at ``level`` or above to stderr."""
    # The embedded homeserver points stderr and stdout at one file, which then holds
    # both Synapse's log and anything printed before logging is set up (config
    # errors, import errors, tracebacks).
    return {
        "version": 1,
        "formatters": {
            "precise": {
                "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - "
                "%(request)s - %(message)s"
            }
        },
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "precise"}},
        "loggers": {"synapse.storage.SQL": {"level": "WARNING"}},
        "root": {"level": level, "handlers": ["console"]},
        "disable_existing_loggers": False,
    }
