"""The trace model: one event schema, and a trace file that saves and loads it."""
