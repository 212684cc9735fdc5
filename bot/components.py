"""The features that make up a Loket process. Each module here exposes ``setup(runtime)``.

A feature registers its routes, router steps, channels, effect appliers and background tasks in
``setup``; nothing else in the core needs to change when a feature lands.
"""

COMPONENTS: list[str] = [
    "bot.channels.webchat",
    "bot.channels.telegram",
    "bot.channels.whatsapp",
    "bot.channels.email",
    "bot.health",
    "bot.flows.component",
    "knowledge_base",
    "bot.appointments",
    "bot.api.web",
    "agent_console.escalation",
    "agent_console.web",
    "bot.webhooks_out",
    "bot.housekeeping",
    "bot.metrics",
]
