"""clipdex query side: search a store by text or image, serve it, tag it, ask about it."""
