"""Operating healthgate by hand: finding messages, and cancelling, releasing and
retrying them, each recorded on the message with who asked."""

from scheduler.operate import actions
from scheduler.operate.actions import Acted, NotActionable
from scheduler.operate.finding import find_messages

__all__ = ["Acted", "NotActionable", "actions", "find_messages"]
