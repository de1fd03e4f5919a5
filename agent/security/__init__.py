"""Who may use the daemon and how much: API keys, request limits, rate limits."""
