"""The command-line faces of the library: one module per `llb` command parses its options, calls the library
and prints; `llb.cli` gathers them (and keeps `segment`, the main command, itself). The library modules take
typed arguments, never argparse namespaces (tests/test_layout.py keeps argparse here and in llb.cli)."""
