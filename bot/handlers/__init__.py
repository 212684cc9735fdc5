"""Flow handlers. Importing the package registers the built-in ones (``bot.handlers.builtin``)."""

from bot.handlers import builtin as _builtin  # noqa: F401 - registers order_status, set_attribute, tag_conversation
from bot.handlers.registry import HandlerContext, HandlerError, register

__all__ = ["HandlerContext", "HandlerError", "register"]
