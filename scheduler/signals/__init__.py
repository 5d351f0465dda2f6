"""Signals: chat health, line reputation, inbound messages and opt-outs, from webhooks,
polling and people, applied to the store."""
