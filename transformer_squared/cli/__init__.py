"""The `t2` command line: thin commands that parse arguments, build a config and call the library."""
