"""Reading articles from a folder of Markdown files (YAML front matter) or from a CSV file.

Every problem is reported per file (or per CSV row) with the reason; the good ones still import.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

LANGUAGES = ("id", "en")
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
SLUG_RE = re.compile(r"[^a-z0-9]+")
MAX_BODY_CHARS = 200_000
MAX_FILE_BYTES = 1_000_000


class ArticleError(ValueError):
    """Why one file or row cannot be imported."""


@dataclass(frozen=True)
class ArticleInput:
    external_id: str
    title: str
    body: str
    answer: str
    category: str
    category_name: str
    language: str
    tags: tuple[str, ...] = ()
    questions: tuple[str, ...] = ()
    published: bool = True

    @property
    def content_hash(self) -> str:
        data = json.dumps([self.title, self.body, self.answer, self.category, self.language, list(self.tags),
                           list(self.questions), self.published], ensure_ascii=False)
        return hashlib.sha256(data.encode()).hexdigest()


@dataclass(frozen=True)
class Rejected:
    source: str  # file path or "file.csv:row N"
    reason: str


@dataclass
class ParseReport:
    articles: list[ArticleInput] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def slugify(text: str) -> str:
    return SLUG_RE.sub("-", text.lower()).strip("-")[:120] or "umum"


def _strip_md(text: str) -> str:
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[*_`>#]+", "", text)
    return " ".join(text.split())


def first_paragraph(body: str) -> str:
    """The short answer when none is given: the first paragraph of prose (headings skipped)."""
    for block in re.split(r"\n\s*\n", body.strip()):
        lines = [ln for ln in block.strip().splitlines() if not ln.lstrip().startswith("#")]
        text = _strip_md(" ".join(lines))
        if text:
            return text[:600]
    return ""


def _str_list(value: Any, name: str, sep: str = "|") -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        items = [v.strip() for v in value.split(sep)]
    elif isinstance(value, list):
        if not all(isinstance(v, str | int | float) for v in value):
            raise ArticleError(f"'{name}' must be a list of texts")
        items = [str(v).strip() for v in value]
    else:
        raise ArticleError(f"'{name}' must be a list of texts, not {type(value).__name__}")
    return tuple(dict.fromkeys(i for i in items if i))


def build_article(meta: dict[str, Any], body: str) -> ArticleInput:
    """Validate one article's fields; raises ArticleError naming the problem."""
    missing = [k for k in ("id", "title", "language") if not str(meta.get(k) or "").strip()]
    if missing:
        raise ArticleError(f"missing required field(s): {', '.join(missing)}")
    ext_id = str(meta["id"]).strip()
    if not ID_RE.match(ext_id):
        raise ArticleError(f"id {ext_id!r} may only contain letters, digits, '.', '_' and '-' (max 200)")
    language = str(meta["language"]).strip().lower()
    if language not in LANGUAGES:
        raise ArticleError(f"language {language!r} is not supported: use one of {', '.join(LANGUAGES)}")
    title = " ".join(str(meta["title"]).split())
    if len(title) > 300:
        raise ArticleError("title is longer than 300 characters")
    body = (body or "").strip()
    if not body:
        raise ArticleError("the article has no body (the text after the front matter is empty)")
    if len(body) > MAX_BODY_CHARS:
        raise ArticleError(f"body is longer than {MAX_BODY_CHARS} characters")
    category_raw = str(meta.get("category") or "umum").strip()
    published = meta.get("published", True)
    if isinstance(published, str):
        published = published.strip().lower() not in {"false", "no", "0", "tidak"}
    answer = " ".join(str(meta.get("answer") or "").split()) or first_paragraph(body)
    return ArticleInput(
        external_id=ext_id,
        title=title,
        body=body,
        answer=answer,
        category=slugify(category_raw),
        category_name=str(meta.get("category_name") or category_raw.replace("-", " ").strip().capitalize()),
        language=language,
        tags=_str_list(meta.get("tags"), "tags", sep=","),
        questions=_str_list(meta.get("questions"), "questions"),
        published=bool(published),
    )


FRONT_RE = re.compile(r"\A\ufeff?---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)(.*)\Z", re.S)


def parse_markdown(text: str) -> ArticleInput:
    m = FRONT_RE.match(text)
    if not m:
        raise ArticleError("no YAML front matter: the file must start with '---', the fields, then '---'")
    try:
        meta = yaml.safe_load(m.group(1))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 2})" if where is not None else ""
        raise ArticleError(f"malformed front matter{line}: {getattr(exc, 'problem', None) or exc}") from exc
    if not isinstance(meta, dict):
        raise ArticleError("malformed front matter: expected 'key: value' fields")
    return build_article(meta, m.group(2))


def iter_markdown_files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in {".md", ".markdown"} and not path.name.startswith("."):
            yield path


def parse_file(path: Path) -> ArticleInput:
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ArticleError(f"file is larger than {MAX_FILE_BYTES // 1000} kB")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ArticleError("file is not UTF-8 text") from exc
    return parse_markdown(text)


CSV_COLUMNS = ("id", "title", "body", "answer", "category", "language", "tags", "questions", "published")


def parse_csv_text(text: str, source: str) -> ParseReport:
    report = ParseReport()
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    need = {"id", "title", "body", "language"}
    if not need <= set(fields):
        report.rejected.append(Rejected(source, f"CSV header must include {', '.join(sorted(need))}; "
                                                f"found {', '.join(fields) or 'nothing'}"))
        return report
    seen: set[str] = set()
    for n, row in enumerate(reader, start=2):
        row = {(k or "").strip().lower(): v for k, v in row.items()}
        try:
            if None in row or "" in row:
                raise ArticleError("row has more cells than the header")
            art = build_article(row, row.get("body") or "")
            if art.external_id in seen:
                raise ArticleError(f"id {art.external_id!r} appears twice in this file")
            seen.add(art.external_id)
            report.articles.append(art)
        except ArticleError as exc:
            report.rejected.append(Rejected(f"{source}:row {n}", str(exc)))
    return report


def sources(path: Path) -> list[Path]:
    """The files an import of PATH reads: one CSV, one Markdown file, or a folder's Markdown files."""
    if path.is_dir():
        return list(iter_markdown_files(path))
    return [path]


def parse_source(path: Path, report: ParseReport) -> None:
    """Parse one file into the report (CSV: many articles; Markdown: one)."""
    if path.suffix.lower() == ".csv":
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            report.rejected.append(Rejected(str(path), "file is not UTF-8 text"))
            return
        sub = parse_csv_text(text, str(path))
        report.articles.extend(sub.articles)
        report.rejected.extend(sub.rejected)
        return
    try:
        report.articles.append(parse_file(path))
    except ArticleError as exc:
        report.rejected.append(Rejected(str(path), str(exc)))


def parse_path(path: Path) -> ParseReport:
    report = ParseReport()
    if not path.exists():
        report.rejected.append(Rejected(str(path), "no such file or folder"))
        return report
    for p in sources(path):
        parse_source(p, report)
    dedup: dict[str, ArticleInput] = {}
    for a in report.articles:
        if a.external_id in dedup:
            report.rejected.append(Rejected(a.external_id, "id used by more than one file; the first one is kept"))
            continue
        dedup[a.external_id] = a
    report.articles = list(dedup.values())
    return report
