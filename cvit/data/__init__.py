"""Data: LLaVA-format records, the task stream, datasets, collation and the DataModule."""
