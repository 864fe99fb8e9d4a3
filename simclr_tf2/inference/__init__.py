"""A trained encoder put to use: loading from any source, embeddings, kNN and linear probes,
plots, and the fair random-init comparison."""
