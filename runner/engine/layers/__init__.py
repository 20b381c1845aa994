"""Model building blocks: parallel linear layers, norms, rotary embedding, activations, embeddings."""
