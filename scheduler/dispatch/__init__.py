"""Dispatch: claiming due messages, gating them in batches, sending and reconciling."""

from scheduler.dispatch.claims import Claim, claim_due
from scheduler.dispatch.gating import dispatch_claimed, drain
from scheduler.dispatch.report import Report

__all__ = ["Claim", "Report", "claim_due", "dispatch_claimed", "drain"]
