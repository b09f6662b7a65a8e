"""Corpus -> index bundle: teacher vectors plus truncated and quantized FAISS variants."""
