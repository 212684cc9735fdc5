"""Import aiogram with its Telegram types built on first use, not at import.

aiogram declares its ~440 types with pydantic's ``defer_build=True`` and then, at the end of
``aiogram/types/__init__.py``, rebuilds every one of them to resolve forward references. On this project's
machine that costs ~130 MB of memory and ~4 s of start-up, for validators of types a service desk never
receives (stories, gifts, business accounts, paid media …). Importing this module first imports aiogram
with that loop turned into bookkeeping: ``model_rebuild`` only records the namespace it was given. A type is
then built, with that same namespace, the first time pydantic needs it (validating an update, parsing an API
answer), which is what ``defer_build`` is for. Behaviour is unchanged; the tests exercise aiogram's models
through the channel.

Modules that use aiogram import this one first (``import bot.channels.aiogram_lazy  # isort: split``).
"""

from __future__ import annotations

import sys
from typing import Any

from pydantic import BaseModel

_namespace: dict[str, Any] | None = None


def _load() -> None:
    global _namespace
    if "aiogram.types" in sys.modules:
        return  # imported already (by someone else): nothing to save any more
    original = BaseModel.__dict__["model_rebuild"]  # the classmethod object
    build = original.__func__

    def record_only(cls: type[BaseModel], *, force: bool = False, raise_errors: bool = True,
                    _parent_namespace_depth: int = 2, _types_namespace: Any = None) -> bool | None:
        global _namespace
        if _types_namespace is not None and cls.__module__.startswith("aiogram.types.") and not force:
            _namespace = dict(_types_namespace)
            return None
        return build(cls, force=force, raise_errors=raise_errors, _parent_namespace_depth=_parent_namespace_depth,
                     _types_namespace=_types_namespace)

    BaseModel.model_rebuild = classmethod(record_only)  # type: ignore[method-assign,assignment]
    try:
        import aiogram  # noqa: F401 - the import this module is for
        from aiogram.methods.base import Response, TelegramMethod
        from aiogram.types.base import TelegramObject
    finally:
        BaseModel.model_rebuild = original  # type: ignore[method-assign]

    def rebuild_with_types(cls: type[BaseModel], *, force: bool = False, raise_errors: bool = True,
                           _parent_namespace_depth: int = 2, _types_namespace: Any = None) -> bool | None:
        return build(cls, force=force, raise_errors=raise_errors, _parent_namespace_depth=_parent_namespace_depth,
                     _types_namespace=_namespace if _types_namespace is None else _types_namespace)

    # pydantic builds a deferred model by calling ``cls.model_rebuild()``: give it aiogram's namespace (the API
    # methods and their ``Response[...]`` wrappers refer to the types, so they wait for it too)
    for base in (TelegramObject, TelegramMethod, Response):
        base.model_rebuild = classmethod(rebuild_with_types)  # type: ignore[method-assign,assignment]


_load()
