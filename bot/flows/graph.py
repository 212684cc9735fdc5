"""Mermaid flowchart of a flow (``loket flows graph FLOW``)."""

from __future__ import annotations

from bot.flows.loader import FlowDef, node_edges

SHAPES = {
    "say": ('["', '"]'), "ask": ('[/"', '"/]'), "menu": ('{{"', '"}}'), "branch": ('{"', '"}'),
    "call": ('[["', '"]]'), "search_kb": ('[("', '")]'), "handover": ('(["', '"])'), "goto": ('>"', '"]'),
    "end": ('(("', '"))'),
}


def _label(text: str) -> str:
    return text.replace('"', "'").replace("\n", " ")[:60]


def condition(cond: dict[str, object]) -> str:
    """A short reading of a branch test: ``order.status = shipped``, ``hours clinic open``."""
    if "hours" in cond:
        return f"hours {cond['hours'] if isinstance(cond['hours'], str) else ''} " + (
            "open" if cond.get("open", True) else "closed")
    subject = next((f"{k} {cond[k]}" if k in ("tag",) else str(cond[k]) for k in
                    ("slot", "attribute", "language", "channel", "tag") if k in cond), "?")
    ops = {"equals": "=", "not_equals": "≠", "in": "in", "exists": "exists", "gt": ">", "gte": "≥", "lt": "<",
           "lte": "≤", "matches": "~"}
    for op, sign in ops.items():
        if op in cond:
            return f"{subject} {sign} {cond[op]}"
    return subject


def mermaid(flow: FlowDef, lang: str = "id") -> str:
    lines = ["flowchart TD", f'  %% {flow.id} version {flow.version}']
    for nid, node in flow.nodes.items():
        kind = node["type"]
        detail = ""
        if kind == "call":
            detail = f": {node.get('handler') or node.get('rasa_action')}"
        elif kind == "handover":
            detail = f": {node.get('team') or 'any team'}"
        elif kind == "goto" and node.get("flow"):
            detail = f": flow {node['flow']}"
        elif kind == "ask":
            detail = f": {(node.get('validate') or {}).get('type', 'text') if isinstance(node.get('validate'), dict) else node.get('validate', 'text')}"
        left, right = SHAPES[kind]
        lines.append(f"  {nid}{left}{_label(f'{nid} ({kind}{detail})')}{right}")
    for nid, node in flow.nodes.items():
        labels: dict[str, str] = {}
        for i, opt in enumerate(node.get("options") or []):
            if isinstance(opt, dict) and opt.get("goto"):
                labels[f"option {i + 1}"] = (opt.get("label") or {}).get(lang, str(opt.get("value")))
        for i, case in enumerate(node.get("cases") or []):
            labels[f"case {i + 1}"] = condition(case.get("if") or {})
        for label, target in node_edges(node):
            text = labels.get(label, label if label != "next" else "")
            arrow = f' -->|"{_label(text)}"| ' if text else " --> "
            lines.append(f"  {nid}{arrow}{target}")
    lines.append(f"  style {flow.start} stroke-width:3px")
    return "\n".join(lines)
