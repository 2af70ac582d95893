"""The gradcheck command line (`gradcheck.cli.main:cli`)."""
