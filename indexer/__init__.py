"""clipdex indexer: turns folders of images into a searchable store (FAISS + SQLite)."""
