"""Domain preparation (sources → tokenize → pack → MDS shards + manifest), similarity measures, and the typed-config
base and error type every package builds on."""
