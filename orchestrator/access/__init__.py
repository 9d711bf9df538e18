"""Who may call what: credentials, user tokens and the audit log."""
