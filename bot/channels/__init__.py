"""Channel adapters: one module per channel, each implementing ``bot.channels.base.Channel``."""
