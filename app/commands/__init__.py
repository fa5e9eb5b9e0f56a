"""One module per `vmr` subcommand: `add_arguments(parser)` (cheap) and `run(args) -> int` (imports heavy deps)."""
