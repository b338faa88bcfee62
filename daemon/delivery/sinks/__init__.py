"""Alert sinks: each delivers alerts to one destination (stdout, file, webhook, …)."""
