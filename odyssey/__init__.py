"""The `odyssey` command: each package's verbs composed under one parser and one error guard (odyssey/cli.py)."""
