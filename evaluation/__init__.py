"""Retrieval quality and speed by mode (who embeds queries and documents) × index variant."""
