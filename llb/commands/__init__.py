"""The command-line faces of the library: one module per `llb` command parses its options, calls the library
and prints; `llb.cli` gathers them. The library modules themselves take no argparse namespaces."""
