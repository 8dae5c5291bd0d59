"""Small value types shared by the catalog models (durations, quantities, names)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, PlainSerializer, WithJsonSchema

_DURATION_RE = re.compile(r"^\s*(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*$")


def parse_duration(value: object) -> timedelta:
    """Parse ``90s``, ``30m``, ``1h30m``, ``2d`` or a number of seconds into a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '30m', got {value!r}")
    if isinstance(value, int | float):
        if value <= 0:
            raise ValueError(f"a duration must be positive, got {value!r}")
        return timedelta(seconds=value)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match and any(match.groups()):
            days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
            delta = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
            if delta.total_seconds() > 0:
                return delta
    raise ValueError(f"expected a duration such as '90s', '30m', '1h30m' or '2d', got {value!r}")


def format_duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": _DURATION_RE.pattern, "examples": ["90s", "30m", "1h30m"]},
                {"type": "number", "exclusiveMinimum": 0},
            ],
            "description": "A duration: '90s', '30m', '1h30m', '2d', or seconds.",
        }
    ),
]

# Kubernetes resource quantities (https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/)
_QUANTITY_RE = re.compile(r"^([0-9]+(\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def _check_quantity(value: str) -> str:
    if not _QUANTITY_RE.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (examples: '500m', '2', '512Mi', '8Gi')")
    return value


Quantity = Annotated[
    str,
    BeforeValidator(lambda v: str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v),
    AfterValidator(_check_quantity),
    WithJsonSchema({"type": ["string", "number"], "pattern": _QUANTITY_RE.pattern}),
]

_DNS_LABEL_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def _check_dns_label(value: str) -> str:
    if not _DNS_LABEL_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid name: use lowercase letters, digits and '-', "
            "start with a letter, at most 63 characters"
        )
    return value


DnsLabel = Annotated[str, AfterValidator(_check_dns_label)]


def quantity_to_bytes(value: str) -> int:
    """Convert a memory quantity ('512Mi', '8Gi', '1G') into bytes."""
    match = _QUANTITY_RE.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    number = float(match.group(1))
    suffix = match.group(3) or ""
    factors = {
        "": 1,
        "m": 1e-3,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "P": 1e15,
        "E": 1e18,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "Pi": 2**50,
        "Ei": 2**60,
    }
    return int(number * factors[suffix])
