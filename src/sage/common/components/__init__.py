"""Components shared by pipelines and servers: the inference stack and embeddings."""
