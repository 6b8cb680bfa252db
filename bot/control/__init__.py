"""Commands from the core group and events from participants."""
