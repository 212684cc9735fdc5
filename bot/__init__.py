"""Loket: chat-first, omnichannel service desk bot."""

__version__ = "0.1.0"
