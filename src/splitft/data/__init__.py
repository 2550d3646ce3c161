"""Data layer: corpora, tokenization and batching, client partitioning, and the run entry point.

Typical use (what the round loop does)::

    from splitft.data import prepare_data
    data = prepare_data(cfg.data, tokenizer, num_clients=cfg.federation.num_clients, seed=cfg.seed)
    data.clients[i]  # TokenizedDataset of client i
"""

from splitft.data.corpora import (
    E2E_TEMPLATE,
    GSM8K_TEMPLATE,
    KNOWN_CORPORA,
    Corpus,
    Sample,
    find_data_dir,
    load_corpus,
    load_e2e,
    load_gsm8k,
    load_jsonl,
    load_shakespeare,
    load_txt,
    load_wikitext2,
)
from splitft.data.partition import (
    IidPartitioner,
    LengthDirichletPartitioner,
    Partitioner,
    global_length_histogram,
    heldout_split,
    js_divergence,
    length_bin_histograms,
    length_bins,
    mean_js_to_global,
)
from splitft.data.prepare import PARTITIONS, PartitionedData, PreparedData, partition_data, prepare_data
from splitft.data.tokenize import (
    IGNORE_INDEX,
    TokenizedDataset,
    WhitespaceTokenizer,
    batches,
    collate,
    eval_batches,
    pack,
    pad_id_of,
    tokenize,
)

__all__ = [
    "E2E_TEMPLATE",
    "GSM8K_TEMPLATE",
    "IGNORE_INDEX",
    "KNOWN_CORPORA",
    "PARTITIONS",
    "Corpus",
    "IidPartitioner",
    "LengthDirichletPartitioner",
    "PartitionedData",
    "Partitioner",
    "PreparedData",
    "Sample",
    "TokenizedDataset",
    "WhitespaceTokenizer",
    "batches",
    "collate",
    "eval_batches",
    "find_data_dir",
    "global_length_histogram",
    "heldout_split",
    "js_divergence",
    "length_bin_histograms",
    "length_bins",
    "load_corpus",
    "load_e2e",
    "load_gsm8k",
    "load_jsonl",
    "load_shakespeare",
    "load_txt",
    "load_wikitext2",
    "mean_js_to_global",
    "pack",
    "pad_id_of",
    "partition_data",
    "prepare_data",
    "tokenize",
]
