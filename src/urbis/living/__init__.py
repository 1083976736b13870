"""The living twin: history, the temporal API, alert rules; listens to the twin's change
events. Not built yet (issue 12)."""
