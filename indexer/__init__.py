"""clipdex's library: builds and changes stores (SQLite + float16 vectors + FAISS, or PostgreSQL + pgvector) from
folders of images, and holds what the application shares: model loading, runtimes, decoding, the store. It never
imports `search`."""
