"""Load flow YAML files and check them. Every problem names file, line and the fix.

A flow file holds one flow::

    id: clinic            # [a-z0-9_-], unique in the folder
    version: 3            # whole number; bump it when you change the flow
    name: {id: Klinik, en: Clinic}
    start: welcome        # the first node
    timeout: 30m          # inactivity timeout (s, m, h); default 30m
    triggers: [jadwal, booking]
    nodes:
      welcome: {type: say, text: {id: Halo!, en: Hello!}, next: …}

See docs/flows.md for every node type.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from bot.flows.validators import VALIDATOR_KINDS

LANGS_REQUIRED = ("id", "en")
NODE_TYPES = ("say", "ask", "menu", "branch", "call", "search_kb", "handover", "goto", "end")
TOP_KEYS = ("id", "version", "name", "description", "start", "timeout", "timeout_text", "triggers", "hours",
            "nodes", "default_error")
COMMON_KEYS = ("type", "description")
NODE_KEYS: dict[str, tuple[str, ...]] = {
    "say": ("text", "next"),
    "ask": ("text", "save", "validate", "options", "error", "max_attempts", "on_fail", "next"),
    "menu": ("text", "options", "error", "max_attempts", "on_fail", "save"),
    "branch": ("cases", "else"),
    "call": ("handler", "args", "rasa_action", "url", "save", "timeout", "next", "on_error", "if_missing", "error"),
    "search_kb": ("query", "text", "next", "on_miss", "team", "include"),
    "handover": ("team", "reason", "text", "include", "priority"),
    "goto": ("goto", "flow"),
    "end": ("text",),
}
TEXT_KEYS = ("text", "error", "timeout_text", "default_error")
CONDITION_SUBJECTS = ("slot", "attribute", "hours", "language", "channel", "tag")
CONDITION_OPS = ("equals", "not_equals", "in", "exists", "gt", "gte", "lt", "lte", "matches", "open")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
SLOT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RANGE_RE = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)\s*-\s*([01]\d|2[0-4]):([0-5]\d)$")
DURATION_RE = re.compile(r"^(\d+)\s*(s|sec|m|min|h|hr|d)?$")
TELEGRAM_CALLBACK_LIMIT = 64


@dataclass(frozen=True)
class FlowError:
    file: str
    line: int
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message} — fix: {self.fix}"


class FlowLoadError(Exception):
    """One or more flow files are broken; ``errors`` lists each with file, line and fix."""

    def __init__(self, errors: list[FlowError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


@dataclass
class FlowDef:
    id: str
    version: int
    name: dict[str, str]
    start: str
    nodes: dict[str, dict[str, Any]]
    timeout_seconds: int = 1800
    timeout_text: dict[str, str] | None = None
    default_error: dict[str, str] | None = None
    triggers: list[str] = field(default_factory=list)
    hours: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = ""
    path: str = ""
    lines: dict[str, int] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        return (self.id, self.version)

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    def targets(self, node_id: str) -> list[tuple[str, str]]:
        """(label, target node) of every edge leaving a node."""
        return node_edges(self.nodes[node_id])


def node_edges(node: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key in ("next", "on_fail", "on_error", "on_miss", "if_missing", "else"):
        if isinstance(node.get(key), str):
            out.append((key, node[key]))
    if node.get("type") == "goto" and isinstance(node.get("goto"), str):
        out.append(("goto", node["goto"]))
    for i, opt in enumerate(node.get("options") or []):
        if isinstance(opt, dict) and isinstance(opt.get("goto"), str):
            out.append((f"option {i + 1}", opt["goto"]))
    for i, case in enumerate(node.get("cases") or []):
        if isinstance(case, dict) and isinstance(case.get("goto"), str):
            out.append((f"case {i + 1}", case["goto"]))
    return out


def parse_duration(raw: Any) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw if raw > 0 else None
    m = DURATION_RE.match(str(raw).strip().lower())
    if not m:
        return None
    n, unit = int(m.group(1)), (m.group(2) or "s")[0]
    secs = n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    return secs if secs > 0 else None


def plain(data: Any) -> Any:
    """ruamel's commented containers → plain dicts/lists (for storage and the engine)."""
    if isinstance(data, dict):
        return {str(k): plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [plain(v) for v in data]
    return data


def _suggest(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'? " if close else ""


class _Checker:
    def __init__(self, file: str) -> None:
        self.file = file
        self.errors: list[FlowError] = []

    def err(self, line: int, message: str, fix: str) -> None:
        self.errors.append(FlowError(self.file, line, message, fix))

    # ruamel lines are 0-based
    @staticmethod
    def key_line(m: Any, key: Any, default: int) -> int:
        try:
            return int(m.lc.key(key)[0]) + 1
        except (AttributeError, KeyError, TypeError):
            return default

    @staticmethod
    def value_line(m: Any, key: Any, default: int) -> int:
        try:
            return int(m.lc.value(key)[0]) + 1
        except (AttributeError, KeyError, TypeError):
            return default

    @staticmethod
    def item_line(s: Any, i: int, default: int) -> int:
        try:
            return int(s.lc.item(i)[0]) + 1
        except (AttributeError, KeyError, TypeError, IndexError):
            return default

    def text(self, m: Any, key: str, line: int, where: str, required: bool = True) -> None:
        if key not in m:
            if required:
                self.err(line, f"{where} has no '{key}'",
                         f"add `{key}: {{id: \"…\", en: \"…\"}}` with the Indonesian and English text")
            return
        value = m[key]
        vline = self.value_line(m, key, line)
        if isinstance(value, str):
            self.err(vline, f"{where}: '{key}' is a plain string, so it has no translations",
                     f"write it per language: `{key}: {{id: \"{value[:30]}\", en: \"…\"}}`")
            return
        if not isinstance(value, dict):
            self.err(vline, f"{where}: '{key}' must map languages to texts", f"write `{key}: {{id: \"…\", en: \"…\"}}`")
            return
        for lang in LANGS_REQUIRED:
            if not str(value.get(lang) or "").strip():
                self.err(vline, f"{where}: '{key}' lacks the '{lang}' translation",
                         f"add `{lang}: \"…\"` to {key}")


def load_text(source: str, file: str) -> tuple[FlowDef | None, list[FlowError]]:
    """Parse and check one flow. Returns (flow or None, errors)."""
    chk = _Checker(file)
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        doc = yaml.load(source)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = (mark.line + 1) if mark else 1
        problem = (exc.problem or str(exc)).strip()
        fix = "remove or rename the repeated key" if "duplicate" in problem else \
            "fix the YAML syntax (indentation with spaces, quote texts containing ': ' or '#')"
        chk.err(line, f"YAML error: {problem}", fix)
        return None, chk.errors
    except Exception as exc:  # noqa: BLE001 - any YAML library error is a file problem
        chk.err(1, f"YAML error: {exc}", "fix the YAML syntax")
        return None, chk.errors
    if not isinstance(doc, CommentedMap):
        chk.err(1, "a flow file must be a mapping with id, version, start and nodes",
                "start the file with `id: my_flow` and see docs/flows.md")
        return None, chk.errors

    for key in doc:
        if key not in TOP_KEYS:
            chk.err(chk.key_line(doc, key, 1), f"unknown top-level key '{key}'",
                    f"{_suggest(key, TOP_KEYS)}valid keys: {', '.join(TOP_KEYS)}")
    fid = doc.get("id")
    if not isinstance(fid, str) or not ID_RE.match(fid):
        chk.err(chk.value_line(doc, "id", 1) if "id" in doc else 1, f"flow id {fid!r} is missing or invalid",
                "set `id:` to lower-case letters, digits, '_' or '-', e.g. `id: clinic`")
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        chk.err(chk.value_line(doc, "version", 1) if "version" in doc else 1,
                f"flow version {version!r} is missing or not a whole number ≥ 1",
                "set `version: 1` and increase it whenever you change the flow")
    name = doc.get("name")
    if name is None:
        name_map = {"id": str(fid), "en": str(fid)}
    elif isinstance(name, str):
        name_map = {"id": name, "en": name}
    else:
        chk.text(doc, "name", 1, "the flow")
        name_map = {str(k): str(v) for k, v in dict(name).items()} if isinstance(name, dict) else {}
    timeout = 1800
    if "timeout" in doc:
        parsed = parse_duration(doc["timeout"])
        if parsed is None:
            chk.err(chk.value_line(doc, "timeout", 1), f"timeout {doc['timeout']!r} is not a duration",
                    "write a number with a unit, e.g. `timeout: 30m` (s, m, h or d)")
        else:
            timeout = parsed
    for key in ("timeout_text", "default_error"):
        if key in doc:
            chk.text(doc, key, chk.key_line(doc, key, 1), "the flow")
    triggers = doc.get("triggers") or []
    if not isinstance(triggers, list) or not all(isinstance(t, str) and t.strip() for t in triggers):
        chk.err(chk.value_line(doc, "triggers", 1), "triggers must be a list of words or phrases",
                "write `triggers: [jadwal, booking, appointment]`")
        triggers = []
    hours = doc.get("hours") or {}
    if not isinstance(hours, dict):
        chk.err(chk.value_line(doc, "hours", 1), "hours must map a name to a schedule",
                "write `hours: {clinic: {timezone: Asia/Jakarta, weekly: {mon: \"08:00-17:00\"}}}`")
        hours = {}
    for hname, spec in hours.items():
        _check_hours(chk, hours, hname, spec)

    nodes = doc.get("nodes")
    if not isinstance(nodes, CommentedMap) or not nodes:
        chk.err(chk.key_line(doc, "nodes", 1) if "nodes" in doc else 1, "the flow has no nodes",
                "add `nodes:` with at least the start node")
        return None, chk.errors
    node_ids = [str(k) for k in nodes]
    start = doc.get("start")
    if not isinstance(start, str):
        chk.err(1, "the flow has no 'start' node", f"add `start: {node_ids[0]}`")
    elif start not in nodes:
        chk.err(chk.value_line(doc, "start", 1), f"start node '{start}' does not exist",
                f"{_suggest(start, node_ids)}set `start:` to one of: {', '.join(node_ids)}")
    for node_id in node_ids:
        _check_node(chk, nodes, node_id, node_ids, hours, str(fid))

    # reachability (only once the links themselves are right, so one typo does not cascade)
    if not chk.errors and isinstance(start, str) and start in nodes:
        seen: set[str] = set()
        todo = [start]
        while todo:
            cur = todo.pop()
            if cur in seen or cur not in nodes or not isinstance(nodes[cur], dict):
                continue
            seen.add(cur)
            todo.extend(t for _, t in node_edges(nodes[cur]))
        for node_id in node_ids:
            if node_id not in seen:
                chk.err(chk.key_line(nodes, node_id, 1), f"node '{node_id}' is never reached from start '{start}'",
                        "link it from another node (next, goto, an option or a case) or delete it")
    if chk.errors:
        return None, chk.errors
    flow = FlowDef(
        id=str(fid), version=int(version), name=name_map, start=str(start),  # type: ignore[arg-type]
        nodes=plain(nodes), timeout_seconds=timeout,
        timeout_text=plain(doc.get("timeout_text")), default_error=plain(doc.get("default_error")),
        triggers=[str(t).strip().lower() for t in triggers], hours=plain(hours), source=source, path=file,
        lines={nid: chk.key_line(nodes, nid, 1) for nid in node_ids},
    )
    return flow, []


def _check_hours(chk: _Checker, hours: Any, hname: Any, spec: Any) -> None:
    line = chk.key_line(hours, hname, 1)
    if not isinstance(spec, dict):
        chk.err(line, f"hours '{hname}' must be a mapping", "give it `timezone`, `weekly` and optional `holidays`")
        return
    for key in spec:
        if key not in ("timezone", "weekly", "holidays"):
            chk.err(chk.key_line(spec, key, line), f"hours '{hname}': unknown key '{key}'",
                    f"{_suggest(key, ('timezone', 'weekly', 'holidays'))}use timezone, weekly, holidays")
    tz = spec.get("timezone", "Asia/Jakarta")
    try:
        ZoneInfo(str(tz))
    except (ZoneInfoNotFoundError, ValueError):
        chk.err(chk.value_line(spec, "timezone", line), f"hours '{hname}': unknown timezone {tz!r}",
                "use an IANA name such as Asia/Jakarta, Asia/Makassar or Asia/Jayapura")
    weekly = spec.get("weekly") or {}
    if not isinstance(weekly, dict):
        chk.err(chk.value_line(spec, "weekly", line), f"hours '{hname}': weekly must map days to times",
                "write `weekly: {mon: \"08:00-17:00\", sat: \"08:00-12:00\", sun: closed}`")
        weekly = {}
    for day, ranges in weekly.items():
        dline = chk.key_line(weekly, day, line)
        if day not in WEEKDAYS:
            chk.err(dline, f"hours '{hname}': unknown day '{day}'", f"{_suggest(day, WEEKDAYS)}use {', '.join(WEEKDAYS)}")
            continue
        items = [ranges] if isinstance(ranges, str) else ranges
        if not isinstance(items, list):
            chk.err(dline, f"hours '{hname}': {day} must be \"HH:MM-HH:MM\", a list of them, or closed",
                    f"write `{day}: \"08:00-17:00\"`")
            continue
        for r in items:
            if str(r).strip().lower() == "closed":
                continue
            m = RANGE_RE.match(str(r).strip())
            if not m or (m.group(1), m.group(2)) >= (m.group(3), m.group(4)):
                chk.err(dline, f"hours '{hname}': {day} range {r!r} is not HH:MM-HH:MM with start before end",
                        f"write e.g. `{day}: \"08:00-17:00\"`")
    hol = spec.get("holidays") or []
    if not isinstance(hol, list):
        chk.err(chk.value_line(spec, "holidays", line), f"hours '{hname}': holidays must be a list of dates",
                "write `holidays: [2026-12-25, 2027-01-01]`")
        return
    for i, d in enumerate(hol):
        if not re.match(r"^\d{4}-\d{2}-\d{2}$", str(d)):
            chk.err(chk.item_line(hol, i, line), f"hours '{hname}': holiday {d!r} is not a date",
                    "write dates as YYYY-MM-DD")


def _check_target(chk: _Checker, m: Any, key: str, line: int, node_ids: list[str], where: str) -> None:
    target = m.get(key)
    vline = chk.value_line(m, key, line)
    if not isinstance(target, str):
        chk.err(vline, f"{where}: '{key}' must name a node", f"write `{key}: <node id>`")
    elif target not in node_ids:
        chk.err(vline, f"{where}: '{key}' points to node '{target}', which does not exist",
                f"{_suggest(target, node_ids)}use one of: {', '.join(node_ids)}")


def _check_node(chk: _Checker, nodes: Any, node_id: str, node_ids: list[str], hours: Any, flow_id: str) -> None:
    line = chk.key_line(nodes, node_id, 1)
    node = nodes[node_id]
    where = f"node '{node_id}'"
    if not ID_RE.match(node_id):
        chk.err(line, f"node id '{node_id}' has characters other than a-z, 0-9, '_' and '-'",
                "rename it, e.g. `ask_name`")
    if not isinstance(node, dict):
        chk.err(line, f"{where} must be a mapping with a 'type'", "write `type: say` and its keys under it")
        return
    ntype = node.get("type")
    if ntype not in NODE_TYPES:
        tline = chk.value_line(node, "type", line) if "type" in node else line
        chk.err(tline, f"{where} has unknown type {ntype!r}",
                f"{_suggest(str(ntype), NODE_TYPES)}valid types: {', '.join(NODE_TYPES)}")
        return
    allowed = COMMON_KEYS + NODE_KEYS[ntype]
    for key in node:
        if key not in allowed:
            chk.err(chk.key_line(node, key, line), f"{where} ({ntype}) has unknown key '{key}'",
                    f"{_suggest(str(key), allowed)}valid keys for {ntype}: {', '.join(NODE_KEYS[ntype])}")
    for key in ("next", "on_fail", "on_error", "on_miss", "if_missing", "else"):
        if key in node:
            _check_target(chk, node, key, line, node_ids, where)
    for key in ("max_attempts",):
        if key in node and (isinstance(node[key], bool) or not isinstance(node[key], int) or node[key] < 1):
            chk.err(chk.value_line(node, key, line), f"{where}: max_attempts must be a whole number ≥ 1",
                    "write e.g. `max_attempts: 3`")
    for key in ("error", "timeout_text"):
        if key in node:
            chk.text(node, key, line, where)
    if ntype in ("say", "ask", "menu"):
        chk.text(node, "text", line, where)
    if ntype in ("end", "handover", "search_kb") and "text" in node:
        chk.text(node, "text", line, where)
    if ntype == "ask":
        save = node.get("save")
        if not isinstance(save, str) or not SLOT_RE.match(save):
            chk.err(chk.value_line(node, "save", line) if "save" in node else line,
                    f"{where} does not say where to keep the answer",
                    "add `save: slot_name` (letters, digits, '_')")
        if "next" not in node:
            chk.err(line, f"{where} has no 'next'", "add `next: <node id>` for the step after a valid answer")
        _check_validator(chk, node, line, where)
    if ntype == "menu":
        _check_options(chk, node, line, node_ids, where, flow_id, menu=True)
    if ntype == "branch":
        _check_cases(chk, node, line, node_ids, where, hours)
    if ntype == "call":
        if ("handler" in node) == ("rasa_action" in node):
            chk.err(line, f"{where} must have exactly one of 'handler' or 'rasa_action'",
                    "write `handler: order_status` or `rasa_action: action_x` with `url: http://…/webhook`")
        if "rasa_action" in node and not str(node.get("url") or "").startswith(("http://", "https://")):
            chk.err(chk.value_line(node, "url", line) if "url" in node else line,
                    f"{where}: a rasa_action needs the action server's URL",
                    "add `url: http://localhost:5055/webhook`")
        if "args" in node and not isinstance(node["args"], dict):
            chk.err(chk.value_line(node, "args", line), f"{where}: args must be a mapping",
                    "write `args: {order_no: \"{order_no}\"}`")
        if "save" in node and (not isinstance(node["save"], str) or not SLOT_RE.match(node["save"])):
            chk.err(chk.value_line(node, "save", line), f"{where}: save must be a slot name",
                    "write `save: result`")
        if "timeout" in node and (isinstance(node["timeout"], bool) or not isinstance(node["timeout"], int | float)
                                  or not 0 < node["timeout"] <= 60):
            chk.err(chk.value_line(node, "timeout", line), f"{where}: timeout must be seconds between 0 and 60",
                    "write e.g. `timeout: 5`")
        if "next" not in node:
            chk.err(line, f"{where} has no 'next'", "add `next: <node id>` for the step after the call")
    if ntype == "goto":
        if "goto" not in node and "flow" not in node:
            chk.err(line, f"{where} has neither 'goto' nor 'flow'",
                    "write `goto: <node id>` or `flow: <flow id>` to start another flow")
        if "goto" in node:
            _check_target(chk, node, "goto", line, node_ids, where)
    if ntype == "handover":
        inc = node.get("include")
        if inc is not None and (not isinstance(inc, list) or not all(isinstance(s, str) for s in inc)):
            chk.err(chk.value_line(node, "include", line), f"{where}: include must list slot names",
                    "write `include: [name, date]`")
        if "priority" in node and node["priority"] not in ("low", "normal", "high", "urgent"):
            chk.err(chk.value_line(node, "priority", line), f"{where}: unknown priority {node['priority']!r}",
                    "use low, normal, high or urgent")


def _check_validator(chk: _Checker, node: Any, line: int, where: str) -> None:
    spec = node.get("validate", {"type": "text"})
    vline = chk.value_line(node, "validate", line) if "validate" in node else line
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict):
        chk.err(vline, f"{where}: validate must be a mapping", "write `validate: {type: number, min: 1, max: 10}`")
        return
    kind = spec.get("type")
    if kind not in VALIDATOR_KINDS:
        chk.err(chk.value_line(spec, "type", vline) if "type" in spec else vline,
                f"{where}: unknown validator {kind!r}",
                f"{_suggest(str(kind), VALIDATOR_KINDS)}valid validators: {', '.join(VALIDATOR_KINDS)}")
        return
    allowed = {"choice": ("type",), "number": ("type", "min", "max", "integer"), "phone": ("type", "region"),
               "email": ("type",), "date": ("type", "future"), "time": ("type",), "datetime": ("type", "future"),
               "text": ("type", "min_length", "max_length"), "regex": ("type", "pattern", "upper")}[kind]
    for key in spec:
        if key not in allowed:
            chk.err(chk.key_line(spec, key, vline), f"{where}: validator {kind} has no option '{key}'",
                    f"{_suggest(str(key), allowed)}options for {kind}: {', '.join(allowed[1:]) or 'none'}")
    if kind == "number":
        lo, hi = spec.get("min"), spec.get("max")
        for k, v in (("min", lo), ("max", hi)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                chk.err(chk.value_line(spec, k, vline), f"{where}: number {k} {v!r} is not a number",
                        f"write `{k}: 1`")
        if isinstance(lo, int | float) and isinstance(hi, int | float) and lo > hi:
            chk.err(chk.value_line(spec, "min", vline), f"{where}: number range min {lo} is above max {hi}",
                    "swap them so min ≤ max")
    if kind == "text":
        lo, hi = spec.get("min_length", 1), spec.get("max_length")
        if isinstance(lo, bool) or not isinstance(lo, int) or lo < 0 or (
                hi is not None and (isinstance(hi, bool) or not isinstance(hi, int) or hi < max(lo, 1)
                                    if isinstance(lo, int) else True)):
            chk.err(vline, f"{where}: text length limits must be whole numbers with min_length ≤ max_length",
                    "write `validate: {type: text, min_length: 2, max_length: 200}`")
    if kind == "regex":
        pattern = spec.get("pattern")
        if not isinstance(pattern, str):
            chk.err(vline, f"{where}: a regex validator needs a pattern", "add `pattern: \"^[A-Z]{3}-\\\\d{4}$\"`")
        else:
            try:
                re.compile(pattern)
            except re.error as exc:
                chk.err(chk.value_line(spec, "pattern", vline), f"{where}: bad regular expression {pattern!r}: {exc}",
                        "fix the pattern (quote it in single quotes so backslashes stay as written)")
    if kind == "phone":
        region = spec.get("region", "ID")
        if region not in phonenumbers.SUPPORTED_REGIONS:
            chk.err(chk.value_line(spec, "region", vline), f"{where}: unknown phone region {region!r}",
                    "use a two-letter country code such as ID, SG or MY")
    if kind == "choice":
        _check_options(chk, node, line, None, where, "", menu=False)


def _check_options(chk: _Checker, node: Any, line: int, node_ids: list[str] | None, where: str,
                   flow_id: str, menu: bool) -> None:
    opts = node.get("options")
    oline = chk.key_line(node, "options", line) if "options" in node else line
    if not isinstance(opts, CommentedSeq) or not opts:
        chk.err(oline, f"{where} has no options",
                "add `options:` with items like `- {label: {id: Ya, en: Yes}, value: yes" +
                (", goto: next_node}`" if menu else "}`"))
        return
    values: set[str] = set()
    for i, opt in enumerate(opts):
        iline = chk.item_line(opts, i, oline)
        if not isinstance(opt, dict):
            chk.err(iline, f"{where}: option {i + 1} must be a mapping", "write `- {label: {id: …, en: …}, goto: …}`")
            continue
        okeys = ("label", "value", "goto", "language", "aliases") if menu else ("label", "value", "aliases")
        for key in opt:
            if key not in okeys:
                chk.err(chk.key_line(opt, key, iline), f"{where}: option {i + 1} has unknown key '{key}'",
                        f"{_suggest(str(key), okeys)}option keys: {', '.join(okeys)}")
        chk.text(opt, "label", iline, f"{where} option {i + 1}")
        value = opt.get("value") if "value" in opt else opt.get("goto")
        if not isinstance(value, str | int) or not str(value).strip():
            chk.err(iline, f"{where}: option {i + 1} has no value", "add `value: short_name`")
            continue
        if str(value) in values:
            chk.err(iline, f"{where}: option value '{value}' is used twice", "give each option its own value")
        values.add(str(value))
        payload = f"f:{flow_id}:{node_key(node, where)}:{value}"
        if len(payload.encode()) > TELEGRAM_CALLBACK_LIMIT:
            chk.err(iline, f"{where}: option {i + 1}'s button payload is {len(payload.encode())} bytes",
                    f"Telegram buttons carry at most {TELEGRAM_CALLBACK_LIMIT} bytes: shorten the flow id, node id "
                    "or option value")
        if menu:
            if "goto" not in opt:
                chk.err(iline, f"{where}: option {i + 1} does not say where to go", "add `goto: <node id>`")
            elif node_ids is not None:
                _check_target(chk, opt, "goto", iline, node_ids, f"{where} option {i + 1}")
        if "language" in opt and opt["language"] not in LANGS_REQUIRED:
            chk.err(chk.value_line(opt, "language", iline), f"{where}: option {i + 1} sets unknown language "
                    f"{opt['language']!r}", f"use one of: {', '.join(LANGS_REQUIRED)}")


def node_key(node: Any, where: str) -> str:
    """The node id from the ``node '…'`` label (kept short for payloads)."""
    return where.split("'")[1] if "'" in where else where


def _check_cases(chk: _Checker, node: Any, line: int, node_ids: list[str], where: str, hours: Any) -> None:
    cases = node.get("cases")
    cline = chk.key_line(node, "cases", line) if "cases" in node else line
    if not isinstance(cases, CommentedSeq) or not cases:
        chk.err(cline, f"{where} has no cases", "add `cases:` with items like `- {if: {slot: x, equals: y}, goto: z}`")
        return
    if "else" not in node:
        chk.err(line, f"{where} has no 'else'", "add `else: <node id>` for when no case matches")
    for i, case in enumerate(cases):
        iline = chk.item_line(cases, i, cline)
        if not isinstance(case, dict) or "if" not in case or "goto" not in case:
            chk.err(iline, f"{where}: case {i + 1} needs 'if' and 'goto'",
                    "write `- {if: {slot: answer, equals: yes}, goto: node}`")
            continue
        _check_target(chk, case, "goto", iline, node_ids, f"{where} case {i + 1}")
        cond = case["if"]
        if not isinstance(cond, dict):
            chk.err(iline, f"{where}: case {i + 1}'s 'if' must be a mapping",
                    "write `if: {slot: answer, equals: yes}`")
            continue
        subjects = [k for k in cond if k in CONDITION_SUBJECTS]
        if len(subjects) != 1:
            chk.err(iline, f"{where}: case {i + 1} must test exactly one of {', '.join(CONDITION_SUBJECTS)}",
                    "write e.g. `if: {slot: order_status, equals: shipped}` or `if: {hours: clinic}`")
            continue
        for key in cond:
            if key not in CONDITION_SUBJECTS and key not in CONDITION_OPS:
                chk.err(chk.key_line(cond, key, iline), f"{where}: case {i + 1} has unknown test '{key}'",
                        f"{_suggest(str(key), CONDITION_OPS)}tests: {', '.join(CONDITION_OPS)}")
        if subjects[0] == "hours":
            ref = cond["hours"]
            if isinstance(ref, str) and ref not in (hours or {}):
                chk.err(chk.value_line(cond, "hours", iline), f"{where}: case {i + 1} uses unknown hours '{ref}'",
                        f"{_suggest(ref, list(hours or {}))}define it under the flow's `hours:`")
        if "matches" in cond:
            try:
                re.compile(str(cond["matches"]))
            except re.error as exc:
                chk.err(chk.value_line(cond, "matches", iline), f"{where}: bad regular expression: {exc}",
                        "fix the pattern")


def load_file(path: Path) -> tuple[FlowDef | None, list[FlowError]]:
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [FlowError(str(path), 1, f"cannot read the file: {exc}", "check the path and that it is UTF-8")]
    return load_text(source, str(path))


def flow_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and "transcripts" not in p.parts)


def load_folder(path: Path, known_handlers: set[str] | None = None) -> tuple[list[FlowDef], list[FlowError]]:
    """Every flow under ``path`` (a file or a folder), checked one by one and against each other."""
    if not path.exists():
        return [], [FlowError(str(path), 1, "no such file or folder", "point LOKET_FLOWS / the argument at a folder "
                              "of flow YAML files")]
    flows: list[FlowDef] = []
    errors: list[FlowError] = []
    for file in flow_files(path):
        flow, errs = load_file(file)
        errors.extend(errs)
        if flow:
            flows.append(flow)
    errors.extend(check_set(flows, known_handlers))
    return flows, errors


def check_set(flows: list[FlowDef], known_handlers: set[str] | None = None) -> list[FlowError]:
    """Problems between flows: duplicate ids, `flow:` jumps to missing flows, unknown handlers."""
    errors: list[FlowError] = []
    by_id: dict[str, FlowDef] = {}
    for f in flows:
        if f.id in by_id:
            errors.append(FlowError(f.path, 1, f"flow id '{f.id}' is also used by {by_id[f.id].path}",
                                    "give each flow file its own id"))
        by_id[f.id] = f
    for f in flows:
        for nid, node in f.nodes.items():
            if node["type"] == "goto" and "flow" in node and node["flow"] not in by_id:
                errors.append(FlowError(f.path, f.lines.get(nid, 1),
                                        f"node '{nid}' starts flow '{node['flow']}', which is not loaded",
                                        f"{_suggest(str(node['flow']), list(by_id))}use one of: {', '.join(by_id)}"))
            if node["type"] == "call" and "handler" in node and known_handlers is not None \
                    and node["handler"] not in known_handlers and "if_missing" not in node:
                errors.append(FlowError(f.path, f.lines.get(nid, 1),
                                        f"node '{nid}' calls unknown handler '{node['handler']}'",
                                        f"{_suggest(str(node['handler']), sorted(known_handlers))}registered "
                                        f"handlers: {', '.join(sorted(known_handlers))} (or add `if_missing: "
                                        "<node>` for an optional handler)"))
    return errors
