"""VOT short-term (reset-based) evaluation."""
