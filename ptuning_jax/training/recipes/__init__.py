"""Multi-stage recipes (MPT, XPrompt): sequences of `run.train` calls."""
