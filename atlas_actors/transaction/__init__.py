"""Transactions: isolation levels, the writer lease, deadlock detection."""
