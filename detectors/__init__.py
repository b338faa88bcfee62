"""trailguard's detection logic: events, alerts, the detector interface and the detectors (no I/O)."""
