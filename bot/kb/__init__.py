"""Knowledge-base ingestion: reading sources (``sources``), turning them into headed blocks of
text (``extract``), cutting those into chunks counted with SOLAR's tokenizer (``chunking``), and
storing one document per transaction with progress and per-source errors (``ingest``)."""
