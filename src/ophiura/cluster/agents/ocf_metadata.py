"""An OCF agent's `meta-data` XML (OCF 1.1 §"Metadata"): parameters and advertised actions.

    <resource-agent name="Dummy" version="1.0">
      <parameters>
        <parameter name="state" unique="1" required="0">
          <content type="string" default="..."/>
        </parameter>
      </parameters>
      <actions><action name="start" timeout="20s"/> <action name="monitor" timeout="20s"
        interval="10s" depth="0"/> ...</actions>
    </resource-agent>

`validate` uses it to refuse a resource missing a required parameter before the agent ever runs
(an agent's own validate-all is often lenient, and runs only where it is installed).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field


class MetadataError(ValueError):
    """The agent printed something that is not OCF meta-data."""


@dataclass(frozen=True)
class Parameter:
    name: str
    required: bool = False
    unique: bool = False
    type: str = "string"
    default: str | None = None
    shortdesc: str = ""
    choices: tuple[str, ...] = ()  # type "select" (OCF 1.1 <option value=...>)


@dataclass(frozen=True)
class ActionSpec:
    name: str
    timeout: float | None = None  # seconds
    interval: float | None = None
    depth: int | None = None
    role: str | None = None


@dataclass(frozen=True)
class Metadata:
    name: str
    version: str = ""
    parameters: dict[str, Parameter] = field(default_factory=dict)
    actions: list[ActionSpec] = field(default_factory=list)
    # Parameters not listed are used too (passed on as OCF_RESKEY_*: `command`, `lsb:`).
    open: bool = False

    @property
    def required(self) -> list[str]:
        return [p.name for p in self.parameters.values() if p.required]

    def action(self, name: str) -> ActionSpec | None:
        for a in self.actions:
            if a.name == name:
                return a
        return None

    def timeout(self, action: str) -> float | None:
        """The agent's advised timeout for `action` (the first spec of that name)."""
        spec = self.action(action)
        return spec.timeout if spec else None

    def missing(self, params: dict[str, str]) -> list[str]:
        """Required parameters that are absent or empty in `params`."""
        return [n for n in self.required if not params.get(n)]

    def unknown(self, params: dict[str, str], ignore: set[str] | None = None) -> list[str]:
        ignore = ignore or set()
        return sorted(n for n in params if n not in self.parameters and n not in ignore)


_TRUE_FALSE = frozenset({"0", "1", "true", "false", "yes", "no", "on", "off", "y", "n"})


def _type_problem(p: Parameter, value: str) -> str | None:
    """Why `value` does not fit `p`'s declared type, or None."""
    if "{node}" in value:
        return None  # per node: checked where it runs
    t = p.type.lower()
    try:
        if t == "integer":
            int(value, 0)
        elif t in ("number", "float"):
            float(value)
    except ValueError:
        return f"is not {'an integer' if t == 'integer' else 'a number'}: {value!r}"
    if t == "boolean" and value.strip().lower() not in _TRUE_FALSE:
        return f"is not a boolean (true/false, yes/no, 1/0): {value!r}"
    if t in ("time", "duration") and parse_duration(value) is None:
        return f"is not a duration (e.g. 20s, 100ms): {value!r}"
    if p.choices and value not in p.choices:
        return f"is {value!r}, not one of {', '.join(p.choices)}"
    return None


def check_params(md: Metadata, params: dict[str, str], ignore: set[str]) -> list[str]:
    """Every problem of `params` against `md`, in one pass: required ones missing, unknown ones
    (with what is known), values of the wrong type."""
    out = []
    for name in md.missing(params):
        desc = md.parameters[name].shortdesc
        out.append(f"required parameter {name!r} is missing" + (f" ({desc})" if desc else ""))
    if not md.open:
        unknown = md.unknown(params, ignore)
        if unknown:
            known = ", ".join(sorted(md.parameters)) or "none"
            out.append(f"unknown parameter(s) {', '.join(map(repr, unknown))} (known: {known})")
    for name, value in params.items():
        spec = md.parameters.get(name)
        why = _type_problem(spec, value) if spec is not None else None
        if why:
            out.append(f"parameter {name!r} {why}")
    return out


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|msec|s|sec|m|min|h|hr)?\s*$", re.IGNORECASE)
_UNIT = {"ms": 1e-3, "msec": 1e-3, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}


def parse_duration(text: str | None) -> float | None:
    """Pacemaker-style durations: "20s", "100ms", "2m", "30" (seconds)."""
    if text is None or not text.strip():
        return None
    m = _DURATION.match(text)
    if not m:
        return None
    return float(m.group(1)) * _UNIT[(m.group(2) or "s").lower()]


def _flag(value: str | None) -> bool:
    return (value or "0").strip().lower() in {"1", "true", "yes"}


def parse_metadata(xml_text: str) -> Metadata:
    """Parse an agent's meta-data; raises MetadataError when it is not OCF meta-data."""
    start = xml_text.find("<resource-agent")
    if start < 0:
        raise MetadataError("no <resource-agent> element in meta-data output")
    # Keep the XML declaration out: ElementTree wants no text before it.
    try:
        root = ET.fromstring(xml_text[start:].strip())
    except ET.ParseError as exc:
        raise MetadataError(f"meta-data is not well-formed XML: {exc}") from exc
    if root.tag != "resource-agent":
        raise MetadataError(f"root element is <{root.tag}>, not <resource-agent>")
    params: dict[str, Parameter] = {}
    for p in root.iterfind("./parameters/parameter"):
        name = p.get("name")
        if not name:
            continue
        content = p.find("content")
        options = tuple(
            o.get("value", "") for o in (content.iterfind("option") if content is not None else ())
        )
        shortdesc = (p.findtext("shortdesc") or "").strip()
        params[name] = Parameter(
            name=name,
            required=_flag(p.get("required")),
            unique=_flag(p.get("unique")),
            type=content.get("type", "string") if content is not None else "string",
            default=content.get("default") if content is not None else None,
            shortdesc=shortdesc,
            choices=options,
        )
    actions = []
    for a in root.iterfind("./actions/action"):
        name = a.get("name")
        if not name:
            continue
        depth = a.get("depth")
        actions.append(
            ActionSpec(
                name=name,
                timeout=parse_duration(a.get("timeout")),
                interval=parse_duration(a.get("interval")),
                depth=int(depth) if depth and depth.strip().isdigit() else None,
                role=a.get("role"),
            )
        )
    return Metadata(root.get("name", ""), root.get("version", ""), params, actions)
