"""SeqIO tasks, vocabularies and data sources. Needs the `data` extra (TF)."""
