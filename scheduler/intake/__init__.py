"""Intake: validating what the application enqueues and storing it in the outbox."""
