"""Tokens, roles, worker enrollment and the audit log (docs/security.md)."""
