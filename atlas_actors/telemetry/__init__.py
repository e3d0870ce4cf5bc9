"""Telemetry: tracing across mailboxes."""
