"""Video library indexing: read -> embed -> write, FAISS index, and the Searcher."""
