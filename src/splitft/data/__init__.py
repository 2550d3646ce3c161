"""Data layer: corpora, tokenization and batching, client partitioning, and the run entry point.

Import from the defining modules; typical use (what the round loop does)::

    from splitft.data.prepare import prepare_data
    data = prepare_data(cfg.data, tokenizer, num_clients=cfg.federation.num_clients, seed=cfg.seed)
    data.clients[i]  # TokenizedDataset of client i
"""
