from qvpo.cli import entry

entry()
