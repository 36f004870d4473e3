"""Knob values: what one environment variable may hold, parsed and checked, with the one-line
error that names the variable, the value and what is allowed. config.py's KNOBS table uses
these parsers; they know nothing of the server."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, get_type_hints


class ConfigError(ValueError):
    """A setting has a value outside what is allowed; the message is one line for the user."""


@dataclass(frozen=True)
class Knob:
    """One environment variable: its parser, default and the documentation users read."""

    name: str
    default: str
    help: str
    parse: Callable[[str, "Knob"], Any]
    allowed: str = ""
    empty_means_off: bool = False  # an explicitly empty value turns the feature off

    @property
    def field(self) -> str:
        """The knob's `Settings` field: MODEL_ID -> model_id."""
        return self.name.lower()

    @property
    def type(self) -> Any:
        """The type of the knob's `Settings` field: what `parse` is annotated to return."""
        hints = get_type_hints(self.parse)
        if "return" not in hints:
            raise TypeError(f"{self.name}'s parser needs a return annotation: it is the type "
                            "of the Settings field")
        return hints["return"]


def integer(lo: int, hi: int, multiple_of: int = 1) -> Callable[[str, Knob], int]:
    """An integer lo..hi (a multiple of `multiple_of`)."""
    def parse(raw: str, knob: Knob) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigError(_bad(knob, raw)) from None
        if not lo <= value <= hi or value % multiple_of:
            raise ConfigError(_bad(knob, raw))
        return value

    return parse


def number(lo: float, hi: float) -> Callable[[str, Knob], float]:
    """A number lo..hi."""
    def parse(raw: str, knob: Knob) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ConfigError(_bad(knob, raw)) from None
        if not lo <= value <= hi:
            raise ConfigError(_bad(knob, raw))
        return value

    return parse


def choice(*choices: str) -> Callable[[str, Knob], str]:
    """One of `choices`, case-insensitive."""
    def parse(raw: str, knob: Knob) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ConfigError(_bad(knob, raw))
        return value

    return parse


def fraction(raw: str, knob: Knob) -> float:
    """A number 0 < x <= 1."""
    value = number(0.0, 1.0)(raw, knob)
    if value <= 0:
        raise ConfigError(_bad(knob, raw))
    return value


def text(raw: str, knob: Knob) -> str:
    """The value, trimmed."""
    return raw.strip()


def flag(raw: str, knob: Knob) -> bool:
    """A yes/no: 1/true/yes/on or 0/false/no/off."""
    value = raw.strip().lower()
    if value not in FLAG_WORDS:
        raise ConfigError(_bad(knob, raw))
    return FLAG_WORDS[value]


FLAG_WORDS = {"1": True, "true": True, "yes": True, "on": True,
              "0": False, "false": False, "no": False, "off": False}


def names(raw: str, knob: Knob) -> tuple[str, ...]:
    """A comma-separated list, trimmed, empty items dropped."""
    return tuple(o.strip() for o in raw.split(",") if o.strip())


def rate_limit(raw: str, knob: Knob) -> str:
    """Flask-Limiter's 'N per unit' / 'N/unit' list, or empty."""
    value = raw.strip()
    if not value:
        return ""
    # Flask-Limiter's grammar is "N per unit" or "N/unit"; check the shape here so a typo
    # stops startup instead of surfacing on the first request.
    import re

    one = r"\s*\d+\s*(/|\s+per\s+)\s*(\d+\s*)?(second|minute|hour|day|month|year)s?\s*"
    if not re.fullmatch(f"{one}([;,]{one})*", value, flags=re.IGNORECASE):
        raise ConfigError(_bad(knob, raw))
    return value


def credentials(raw: str, knob: Knob) -> tuple[tuple[str, str], ...]:
    """user:pass pairs, comma-separated (never echoed in errors)."""
    pairs = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        user, colon, password = item.partition(":")
        if not colon or not user or not password:
            # Never echo the value: it holds passwords.
            raise ConfigError(f"{knob.name} is not valid: allowed {knob.allowed} (an entry "
                              "has no ':' or an empty user or password)")
        pairs.append((user, password))
    return tuple(pairs)


def redact_url(url: str) -> str:
    """`url` with any password replaced by ***, for logs and error messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def redis_url(raw: str, knob: Knob) -> str:
    """A redis://, rediss:// or unix:// URL (never echoed with its password)."""
    value = raw.strip()
    if value.split("://", 1)[0] not in ("redis", "rediss", "unix"):
        # Never echo the value as given: it may hold a password.
        raise ConfigError(f"{knob.name}={redact_url(value)!r} is not valid: allowed "
                          f"{knob.allowed}")
    return value


def _bad(knob: Knob, raw: str) -> str:
    return f"{knob.name}={raw!r} is not valid: allowed {knob.allowed}"


# A bake: (its model name, the base model's name, ((LoRA name, weight), ...)).
Bake = tuple[str, str, tuple[tuple[str, float], ...]]
MAX_BAKE_WEIGHT = 10.0


def bakes(raw: str, knob: Knob) -> tuple[Bake, ...]:
    """Comma-separated `[name=]model+lora[:weight][+lora[:weight]...]` items; a missing name is
    `model+lora` with each weight other than 1 written after its LoRA (`sd+detail:0.8`)."""
    out = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        name, equals, spec = item.partition("=")
        if not equals:
            name, spec = "", item
        base, *parts = [p.strip() for p in spec.split("+")]
        if not base or not parts or not all(parts) or (equals and not name.strip()):
            raise ConfigError(f"{knob.name}: {item!r} is not valid: allowed {knob.allowed}")
        loras = tuple(_bake_lora(part, knob) for part in parts)
        shown = "+".join(n if w == 1 else f"{n}:{w:g}" for n, w in loras)
        out.append((name.strip() or f"{base}+{shown}", base, loras))
    return tuple(out)


def _bake_lora(part: str, knob: Knob) -> tuple[str, float]:
    """`name` or `name:weight` (a finite weight of at most MAX_BAKE_WEIGHT either way)."""
    name, colon, weight = part.rpartition(":")
    if not colon:
        return part, 1.0
    try:
        value = float(weight)
    except ValueError:
        raise ConfigError(f"{knob.name}: the weight in {part!r} is not a number") from None
    if not name or not abs(value) <= MAX_BAKE_WEIGHT:
        raise ConfigError(f"{knob.name}: {part!r} is not valid: a LoRA name and a weight "
                          f"-{MAX_BAKE_WEIGHT:g}..{MAX_BAKE_WEIGHT:g}")
    return name.strip(), value
