"""Questions: every source (files, Hub datasets through adapters, the built-in bank) -> one
normalised `datasets.Dataset`, plus the surface features of a question's text."""
